namespace OrtFinetune.Onnx;

/// <summary>Constant, ConstantOfShape, Range, OneHot, NonZero, TopK, Einsum, *Like generators.</summary>
internal static class MiscInference
{
    public static void Register(ShapeInferenceRules r)
    {
        r.Reg(Constant, "Constant");
        r.Reg(ConstantOfShape, "ConstantOfShape");
        r.Reg(Range, "Range");
        r.Reg(OneHot, "OneHot");
        r.Reg(c => c.Set(0, DataType.Int64, c.Shape(0) is Dim[] s ? [new Dim(s.Length), Dim.Unknown] : [Dim.Unknown, Dim.Unknown]), "NonZero");
        r.Reg(TopK, "TopK");
        r.Reg(Einsum, "Einsum");
        r.Reg(c => c.Set(0, c.Node.Attributes.ContainsKey("dtype") ? (DataType)c.Int("dtype", 1) : c.Elem(0), c.Shape(0)),
            "EyeLike", "RandomNormalLike", "RandomUniformLike", "Bernoulli");
        r.Reg(c => c.Set(0, (DataType)c.Int("dtype", 1), c.IntsAttr("shape")?.Select(x => new Dim(x)).ToArray()), "RandomNormal", "RandomUniform");
    }

    static void Constant(InferContext c)
    {
        var n = c.Node;
        if (n.Attr("value") is { T: Tensor t })
        {
            c.Set(0, t.TensorType, InferContext.ValuesOf(t, c.MaxValues));
            return;
        }
        if (n.Attr("value_int") is { } vi) { c.Set(0, DataType.Int64, [], [new Dim(vi.I)]); return; }
        if (n.Attr("value_ints") is { } vis) { c.Set(0, DataType.Int64, [new Dim(vis.Ints.Length)], vis.Ints.Select(x => new Dim(x)).ToArray()); return; }
        if (n.Attr("value_float") is not null) { c.Set(0, DataType.Float, []); return; }
        if (n.Attr("value_floats") is { } vfs) { c.Set(0, DataType.Float, [new Dim(vfs.Floats.Length)]); return; }
        if (n.Attr("value_string") is not null) { c.Set(0, DataType.String, []); return; }
        if (n.Attr("value_strings") is { } vss) { c.Set(0, DataType.String, [new Dim(vss.Strings.Length)]); return; }
        c.Fail("Constant has no supported value attribute");
    }

    static void ConstantOfShape(InferContext c)
    {
        var t = c.Node.Attr("value")?.T;
        var et = t?.Type ?? DataType.Float;
        var v = c.Value(0);
        Dim[]? shape = v;
        if (shape == null && c.Shape(0) is { Length: 1 } s && s[0].Value is long n) shape = Enumerable.Repeat(Dim.Unknown, (int)n).ToArray();
        if (v != null && v.Any(d => d.Value < 0)) c.Fail($"negative dim in shape [{string.Join(",", v)}]");
        Dim[]? values = null;
        if (shape != null && shape.Length <= 1 && et is DataType.Int64 or DataType.Int32 or DataType.Bool)
        {
            long fill = t != null ? t.ToInt64s()[0] : 0;
            long count = shape.Length == 0 ? 1 : shape[0].Value ?? -1;
            if (count >= 0 && count <= c.MaxValues) values = Enumerable.Repeat(new Dim(fill), (int)count).ToArray();
        }
        c.Set(0, et, shape, values);
    }

    static void Range(InferContext c)
    {
        var et = c.Elem(0);
        Dim start = c.Value(0)?[0] ?? Dim.Unknown, limit = c.Value(1)?[0] ?? Dim.Unknown, delta = c.Value(2)?[0] ?? Dim.Unknown;
        if (c.Value(0) == null && c.ConstDoubles(0) is { Length: 1 } sd) start = sd[0] == Math.Floor(sd[0]) ? new Dim((long)sd[0]) : Dim.Unknown;
        Dim count = Dim.Unknown;
        var fs = c.ConstDoubles(0); var fl = c.ConstDoubles(1); var fd = c.ConstDoubles(2);
        if (fs is { Length: 1 } && fl is { Length: 1 } && fd is { Length: 1 } && fd[0] != 0)
            count = new Dim(Math.Max(0, (long)Math.Ceiling((fl[0] - fs[0]) / fd[0])));
        else if (delta.Value == 1 && (start.IsKnown || start.Symbol != null) && (limit.IsKnown || limit.Symbol != null))
            count = SymDim.Sub(limit, start) is { Value: long v } ? new Dim(Math.Max(0, v)) : SymDim.Sub(limit, start);
        Dim[]? values = null;
        if (et is DataType.Int64 or DataType.Int32 && count.Value is long n && n <= c.MaxValues && start.Value is long s0 && delta.Value is long d0)
            values = Enumerable.Range(0, (int)n).Select(k => new Dim(s0 + k * d0)).ToArray();
        c.Set(0, et, [count], values);
    }

    static void OneHot(InferContext c)
    {
        var s = c.Shape(0);
        var et = c.Elem(2);
        if (s == null) { c.Set(0, et, null); return; }
        var depth = c.ConstDoubles(1) is { Length: 1 } dd ? new Dim((long)dd[0]) : c.Value(1)?[0] ?? Dim.Unknown;
        int r = s.Length + 1;
        int axis = c.Axis(c.Int("axis", -1), r);
        var o = s.ToList();
        o.Insert(axis, depth);
        c.Set(0, et, o.ToArray());
    }

    static void TopK(InferContext c)
    {
        var s = c.Shape(0);
        if (s == null) { c.Set(0, c.Elem(0), null); c.Set(1, DataType.Int64, null); return; }
        int axis = c.Axis(c.Int("axis", -1), s.Length);
        var o = (Dim[])s.Clone();
        o[axis] = c.Opset >= 10 ? c.Value(1)?[0] ?? Dim.Unknown : new Dim(c.Int("k", 0));
        if (o[axis].Value is long k && s[axis].Value is long n && k > n) c.Fail($"k={k} exceeds axis size {n}");
        c.Set(0, c.Elem(0), o);
        c.Set(1, DataType.Int64, o);
    }

    /// <summary>Einsum: explicit ("ij,jk->ik") and implicit forms, with "..." broadcast dims.</summary>
    static void Einsum(InferContext c)
    {
        var eq = c.Node.GetString("equation", "").Replace(" ", "");
        var et = c.Elem(0);
        var parts = eq.Split("->");
        var ins = parts[0].Split(',');
        if (ins.Length != c.InputCount) c.Fail($"equation '{eq}' has {ins.Length} operands for {c.InputCount} inputs");
        var letters = new Dictionary<char, Dim>();
        var counts = new Dictionary<char, int>();
        Dim[] ell = [];
        bool anyEll = false;
        for (int i = 0; i < ins.Length; i++)
        {
            var s = c.Shape(i);
            if (s == null) { c.Set(0, et, null); return; }
            var term = ins[i];
            int e = term.IndexOf("...", StringComparison.Ordinal);
            var named = term.Replace("...", "");
            int nEll = s.Length - named.Length;
            if (nEll < 0 || (e < 0 && nEll != 0)) c.Fail($"operand {i} '{term}' does not fit shape [{string.Join(",", s)}]");
            if (e >= 0) { anyEll = true; ell = ElementwiseInference.Broadcast(c, ell, s[e..(e + nEll)]); }
            int pos = 0;
            foreach (var ch in term.Replace("...", "."))
            {
                if (ch == '.') { pos += nEll; continue; }
                var d = s[pos++];
                counts[ch] = counts.GetValueOrDefault(ch) + 1;
                if (letters.TryGetValue(ch, out var prev))
                {
                    if (prev.Value is long a && d.Value is long b && a != b && a != 1 && b != 1) c.Fail($"label '{ch}' has sizes {a} and {b}");
                    if (prev.Value == 1 || (!prev.IsKnown && d.IsKnown)) letters[ch] = d;
                }
                else letters[ch] = d;
            }
        }
        string output = parts.Length > 1 ? parts[1]
            : (anyEll ? "..." : "") + new string(counts.Where(kv => kv.Value == 1).Select(kv => kv.Key).OrderBy(x => x).ToArray());
        var o = new List<Dim>();
        foreach (var ch in output.Replace("...", "."))
        {
            if (ch == '.') o.AddRange(ell);
            else if (letters.TryGetValue(ch, out var d)) o.Add(d);
            else c.Fail($"output label '{ch}' does not appear in the inputs");
        }
        c.Set(0, et, o.ToArray());
    }
}
