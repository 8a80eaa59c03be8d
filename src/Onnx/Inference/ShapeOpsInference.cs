namespace OrtFinetune.Onnx;

/// <summary>Shape, Size, Reshape, Flatten, Transpose, (Un)Squeeze, Expand, Concat, Split, Slice, Gather*, Scatter*, Tile, Pad.</summary>
internal static class ShapeOpsInference
{
    public static void Register(ShapeInferenceRules r)
    {
        r.Reg(Shape, "Shape");
        r.Reg(Size, "Size");
        r.Reg(Reshape, "Reshape");
        r.Reg(Flatten, "Flatten");
        r.Reg(Transpose, "Transpose");
        r.Reg(Squeeze, "Squeeze");
        r.Reg(Unsqueeze, "Unsqueeze");
        r.Reg(Expand, "Expand");
        r.Reg(Concat, "Concat");
        r.Reg(Split, "Split");
        r.Reg(Slice, "Slice");
        r.Reg(Gather, "Gather");
        r.Reg(c => c.Set(0, c.Elem(0), c.Shape(1)), "GatherElements");
        r.Reg(c => c.Set(0, c.Elem(0), c.Shape(0)), "ScatterElements", "ScatterND", "Scatter");
        r.Reg(Tile, "Tile");
        r.Reg(Pad, "Pad");
    }

    static string Fmt(Dim[]? s) => s == null ? "[?]" : $"[{string.Join(",", s)}]";

    static void Shape(InferContext c)
    {
        var s = c.Shape(0);
        if (s == null) { c.Set(0, DataType.Int64, [Dim.Unknown]); return; }
        int r = s.Length;
        long start = c.Int("start", 0), end = c.Int("end", r);
        start = Math.Clamp(start < 0 ? start + r : start, 0, r);
        end = Math.Clamp(end < 0 ? end + r : end, 0, r);
        var v = s[(int)start..(int)Math.Max(start, end)];
        c.Set(0, DataType.Int64, [new Dim(v.Length)], v);
    }

    static void Size(InferContext c)
    {
        var s = c.Shape(0);
        c.Set(0, DataType.Int64, [], s == null ? null : [SymDim.Product(s)]);
    }

    /// <summary>Target dims from a 1-D shape input: its values, or unknowns of the right count, or null.</summary>
    static Dim[]? TargetDims(InferContext c, int i)
    {
        var v = c.Value(i);
        if (v != null) return v;
        var s = c.Shape(i);
        if (s is { Length: 1 } && s[0].Value is long n) return Enumerable.Repeat(Dim.Unknown, (int)n).ToArray();
        return null;
    }

    static void Reshape(InferContext c)
    {
        var inT = c.Type(0);
        var inS = inT?.Shape;
        var target = TargetDims(c, 1);
        if (target == null) { c.Set(0, c.Elem(0), null); return; }
        bool allowZero = c.Int("allowzero", 0) != 0;
        var outS = new Dim[target.Length];
        int minus = -1;
        bool targetKnown = c.Value(1) != null;
        for (int k = 0; k < target.Length; k++)
        {
            var d = target[k];
            if (d.Value == 0 && !allowZero)
                outS[k] = inS != null && k < inS.Length ? inS[k] : inS != null ? c.FailWith<Dim>($"shape {Fmt(target)} copies dim {k} of a rank-{inS.Length} input") : Dim.Unknown;
            else if (d.Value == -1)
            {
                if (minus >= 0) c.Fail($"shape {Fmt(target)} has more than one -1");
                minus = k; outS[k] = Dim.Unknown;
            }
            else if (d.Value < -1) c.Fail($"shape {Fmt(target)} has a negative dim");
            else outS[k] = d;
        }
        if (inS != null && targetKnown)
        {
            var total = SymDim.Product(inS);
            var others = SymDim.Product(outS.Where((_, k) => k != minus));
            bool othersKnown = outS.Where((_, k) => k != minus).All(d => d.IsKnown || d.Symbol != null);
            if (minus >= 0 && othersKnown)
            {
                if (total.Value is long tv && others.Value is long ov)
                {
                    if (ov == 0 || tv % ov != 0) c.Fail($"cannot reshape {Fmt(inS)} ({tv} elements) to {Fmt(target)}");
                    outS[minus] = new Dim(tv / ov);
                }
                else outS[minus] = SymDim.Div(total, others);
            }
            else if (minus < 0 && total.Value is long tv && others.Value is long ov && tv != ov)
                c.Fail($"cannot reshape {Fmt(inS)} ({tv} elements) to {Fmt(target)} ({ov} elements)");
        }
        c.Set(0, c.Elem(0), outS, c.Value(0));
    }

    static void Flatten(InferContext c)
    {
        var s = c.Shape(0);
        if (s == null) { c.Set(0, c.Elem(0), [Dim.Unknown, Dim.Unknown]); return; }
        long axis = c.Int("axis", 1);
        if (axis < -s.Length || axis > s.Length) c.Fail($"axis {axis} is out of range for rank {s.Length}");
        int a = (int)(axis < 0 ? axis + s.Length : axis);
        c.Set(0, c.Elem(0), [SymDim.Product(s[..a]), SymDim.Product(s[a..])], c.Value(0));
    }

    static void Transpose(InferContext c)
    {
        var s = c.Shape(0);
        var perm = c.IntsAttr("perm");
        if (s == null) { c.Set(0, c.Elem(0), perm?.Select(_ => Dim.Unknown).ToArray()); return; }
        perm ??= Enumerable.Range(0, s.Length).Reverse().Select(x => (long)x).ToArray();
        if (perm.Length != s.Length || perm.Distinct().Count() != perm.Length || perm.Any(p => p < 0 || p >= s.Length))
            c.Fail($"perm [{string.Join(",", perm)}] is not a permutation of rank {s.Length}");
        c.Set(0, c.Elem(0), perm.Select(p => s[p]).ToArray(), s.Length <= 1 ? c.Value(0) : null);
    }

    /// <summary>Axes from the attribute (older opsets) or input 1; <paramref name="known"/> false when an input is present but not constant.</summary>
    static long[]? AxesOf(InferContext c, int input, out bool known)
    {
        known = true;
        var a = c.IntsAttr("axes");
        if (a != null) return a;
        if (c.Has(input)) { var v = c.Ints(input); known = v != null; return v; }
        return null;
    }

    static void Squeeze(InferContext c)
    {
        var s = c.Shape(0);
        var axes = AxesOf(c, 1, out bool known);
        if (s == null || !known) { c.Set(0, c.Elem(0), null, c.Value(0)); return; }
        HashSet<int> drop;
        if (axes == null || axes.Length == 0)
        {
            if (s.Any(d => !d.IsKnown)) { c.Set(0, c.Elem(0), null, c.Value(0)); return; }
            drop = Enumerable.Range(0, s.Length).Where(k => s[k].Value == 1).ToHashSet();
        }
        else
        {
            drop = axes.Select(a => c.Axis(a, s.Length)).ToHashSet();
            foreach (var k in drop)
                if (s[k].IsKnown && s[k].Value != 1) c.Fail($"cannot squeeze axis {k} of size {s[k]}");
        }
        c.Set(0, c.Elem(0), s.Where((_, k) => !drop.Contains(k)).ToArray(), c.Value(0));
    }

    static void Unsqueeze(InferContext c)
    {
        var s = c.Shape(0);
        var axes = AxesOf(c, 1, out bool known);
        if (s == null || !known || axes == null) { c.Set(0, c.Elem(0), null, c.Value(0)); return; }
        int r = s.Length + axes.Length;
        var ins = axes.Select(a => c.Axis(a, r)).ToHashSet();
        if (ins.Count != axes.Length) c.Fail($"repeated axes [{string.Join(",", axes)}]");
        var o = new Dim[r];
        int j = 0;
        for (int k = 0; k < r; k++) o[k] = ins.Contains(k) ? new Dim(1) : s[j++];
        c.Set(0, c.Elem(0), o, c.Value(0));
    }

    static void Expand(InferContext c)
    {
        var s = c.Shape(0);
        var target = TargetDims(c, 1);
        if (s == null || target == null) { c.Set(0, c.Elem(0), null); return; }
        var shape = ElementwiseInference.Broadcast(c, s, target);
        Dim[]? v = null;
        var iv = c.Value(0);
        if (iv != null && shape.Length <= 1)
        {
            int n = shape.Length == 0 ? 1 : shape[0].Value is long nn ? (int)nn : -1;
            if (n >= 0 && n <= c.MaxValues && (iv.Length == 1 || iv.Length == n))
                v = Enumerable.Range(0, n).Select(k => iv[iv.Length == 1 ? 0 : k]).ToArray();
        }
        c.Set(0, c.Elem(0), shape, v);
    }

    static void Concat(InferContext c)
    {
        var ins = Enumerable.Range(0, c.InputCount).Where(c.Has).ToList();
        var et = ins.Select(c.Elem).FirstOrDefault(t => t != DataType.Undefined);
        var shapes = ins.Select(c.Shape).ToList();
        var known = shapes.FirstOrDefault(x => x != null);
        if (known == null) { c.Set(0, et, null); return; }
        int r = known.Length;
        int axis = c.Axis(c.Int("axis", 0), r);
        var o = new Dim[r];
        for (int k = 0; k < r; k++) o[k] = k == axis ? new Dim(0) : Dim.Unknown;
        foreach (var s in shapes)
        {
            if (s == null) { o[axis] = Dim.Unknown; continue; }
            if (s.Length != r) c.Fail($"inputs have different ranks ({r} and {s.Length})");
            for (int k = 0; k < r; k++)
            {
                if (k == axis) { o[k] = o[k].IsKnown || o[k].Symbol != null ? SymDim.Add(o[k], s[k]) : Dim.Unknown; continue; }
                if (o[k].IsKnown && s[k].IsKnown && o[k].Value != s[k].Value)
                    c.Fail($"dim {k} differs between inputs ({o[k]} vs {s[k]}) on axis {axis} concat");
                if (!o[k].IsKnown && (s[k].IsKnown || o[k].Symbol == null)) o[k] = s[k];
            }
        }
        Dim[]? v = null;
        if (r == 1 && ins.All(i => c.Value(i) != null)) v = ins.SelectMany(i => c.Value(i)!).ToArray();
        c.Set(0, et, o, v);
    }

    static void Split(InferContext c)
    {
        var s = c.Shape(0);
        int nOut = c.OutputCount;
        var et = c.Elem(0);
        if (s == null) { for (int i = 0; i < nOut; i++) c.Set(i, et, null); return; }
        int axis = c.Axis(c.Int("axis", 0), s.Length);
        long[]? split = c.IntsAttr("split");
        bool known = true;
        if (split == null && c.Has(1)) { split = c.Ints(1); known = split != null; }
        var d = s[axis];
        var sizes = new Dim[nOut];
        if (split != null)
        {
            if (split.Length != nOut) c.Fail($"split has {split.Length} entries for {nOut} outputs");
            if (d.Value is long dv && split.Sum() != dv) c.Fail($"split [{string.Join(",", split)}] does not add up to dim {axis} of size {dv}");
            for (int i = 0; i < nOut; i++) sizes[i] = split[i];
        }
        else if (!known) for (int i = 0; i < nOut; i++) sizes[i] = Dim.Unknown;
        else
        {
            long parts = c.Int("num_outputs", nOut);
            if (d.Value is long dv)
            {
                long chunk = (dv + parts - 1) / parts;
                if (!c.Node.Attributes.ContainsKey("num_outputs") && dv % parts != 0) c.Fail($"dim {axis} of size {dv} is not divisible into {parts} outputs");
                for (int i = 0; i < nOut; i++) sizes[i] = Math.Max(0, Math.Min(chunk, dv - chunk * i));
            }
            else for (int i = 0; i < nOut; i++) sizes[i] = SymDim.Div(d, parts) is { } q && (q.Symbol != null) ? q : Dim.Unknown;
        }
        for (int i = 0; i < nOut; i++)
        {
            var o = (Dim[])s.Clone();
            o[axis] = sizes[i];
            c.Set(i, et, o);
        }
    }

    const long Big = int.MaxValue;

    static void Slice(InferContext c)
    {
        var s = c.Shape(0);
        var et = c.Elem(0);
        if (s == null) { c.Set(0, et, null); return; }
        Dim[]? starts, ends; long[]? axes, steps;
        bool axesKnown = true, stepsKnown = true;
        if (c.Opset < 10)
        {
            starts = c.IntsAttr("starts")?.Select(x => new Dim(x)).ToArray();
            ends = c.IntsAttr("ends")?.Select(x => new Dim(x)).ToArray();
            axes = c.IntsAttr("axes"); steps = null;
        }
        else
        {
            starts = c.Value(1); ends = c.Value(2);
            axes = c.Has(3) ? c.Ints(3) : null; axesKnown = !c.Has(3) || axes != null;
            steps = c.Has(4) ? c.Ints(4) : null; stepsKnown = !c.Has(4) || steps != null;
        }
        int r = s.Length;
        if (starts == null || ends == null || !axesKnown || !stepsKnown)
        {
            // the sliced axes are unknown (or their bounds): keep rank, lose the sliced dims
            var o = new Dim[r];
            for (int k = 0; k < r; k++) o[k] = axes != null && !axes.Select(a => c.Axis(a, r)).Contains(k) ? s[k] : Dim.Unknown;
            c.Set(0, et, o);
            return;
        }
        axes ??= Enumerable.Range(0, starts.Length).Select(x => (long)x).ToArray();
        steps ??= Enumerable.Repeat(1L, starts.Length).ToArray();
        if (starts.Length != ends.Length || axes.Length != starts.Length || steps.Length != starts.Length)
            c.Fail($"starts/ends/axes/steps lengths differ ({starts.Length}, {ends.Length}, {axes.Length}, {steps.Length})");
        var outS = (Dim[])s.Clone();
        var ranges = new (long Start, long Step, long Count)?[r];
        for (int j = 0; j < axes.Length; j++)
        {
            int a = c.Axis(axes[j], r);
            if (steps[j] == 0) c.Fail("slice step is 0");
            var d = s[a];
            if (d.Value is long dv && starts[j].Value is long st && ends[j].Value is long en)
            {
                var (b, cnt) = SliceRange(dv, st, en, steps[j]);
                outS[a] = cnt;
                ranges[a] = (b, steps[j], cnt);
            }
            else outS[a] = steps[j] == 1 ? SymbolicCount(d, starts[j], ends[j]) : Dim.Unknown;
        }
        Dim[]? v = null;
        var iv = c.Value(0);
        if (iv != null && r == 1 && ranges[0] is var (b0, step0, cnt0))
            v = Enumerable.Range(0, (int)cnt0).Select(k => iv[b0 + k * step0]).ToArray();
        else if (iv != null && r == 1 && axes.Length == 0) v = iv;
        c.Set(0, et, outS, v);
    }

    /// <summary>Start index and element count of a slice over a known dim, per the ONNX clamping rules.</summary>
    public static (long Start, long Count) SliceRange(long dim, long start, long end, long step)
    {
        if (start < 0) start += dim;
        if (end < 0) end += dim;
        if (step > 0)
        {
            start = Math.Clamp(start, 0, dim);
            end = Math.Clamp(end, 0, dim);
            return (start, Math.Max(0, (end - start + step - 1) / step));
        }
        start = Math.Clamp(start, 0, dim - 1);
        end = Math.Clamp(end, -1, dim - 1);
        return (start, Math.Max(0, (start - end + (-step) - 1) / (-step)));
    }

    /// <summary>Slice length with step 1 over a symbolic dim, assuming the bounds lie inside it.</summary>
    static Dim SymbolicCount(Dim d, Dim start, Dim end)
    {
        Dim b = start.Value is long sv ? (sv >= 0 ? start : SymDim.Add(d, start)) : SymDim.IsNonNegative(start) ? start : Dim.Unknown;
        Dim e = end.Value is long ev ? (ev >= Big ? d : ev < 0 ? SymDim.Add(d, end) : SymDim.Min(d, end))
            : end.SameAs(d) ? d : Dim.Unknown;
        if ((!b.IsKnown && b.Symbol == null) || (!e.IsKnown && e.Symbol == null)) return Dim.Unknown;
        var n = SymDim.Sub(e, b);
        if (n.Value is long nv) return Math.Max(0, nv);
        return n;
    }

    static void Gather(InferContext c)
    {
        var s = c.Shape(0); var ix = c.Shape(1);
        if (s == null || ix == null) { c.Set(0, c.Elem(0), null); return; }
        int axis = c.Axis(c.Int("axis", 0), s.Length);
        var o = s[..axis].Concat(ix).Concat(s[(axis + 1)..]).ToArray();
        Dim[]? v = null;
        var dv = c.Value(0); var iv = c.Ints(1);
        if (dv != null && iv != null && s.Length == 1 && ix.Length <= 1)
        {
            v = new Dim[iv.Length];
            for (int k = 0; k < iv.Length; k++)
            {
                long i = iv[k] < 0 ? iv[k] + dv.Length : iv[k];
                if (i < 0 || i >= dv.Length) c.Fail($"index {iv[k]} is out of range for a dim of size {dv.Length}");
                v[k] = dv[i];
            }
        }
        else if (s[axis].Value is long n && iv != null)
            foreach (var i in iv) if (i < -n || i >= n) c.Fail($"index {i} is out of range for axis {axis} of size {n}");
        c.Set(0, c.Elem(0), o, v);
    }

    static void Tile(InferContext c)
    {
        var s = c.Shape(0);
        var rep = c.Value(1);
        if (s == null) { c.Set(0, c.Elem(0), null); return; }
        if (rep == null) { c.Set(0, c.Elem(0), s.Select(_ => Dim.Unknown).ToArray()); return; }
        if (rep.Length != s.Length) c.Fail($"repeats has {rep.Length} entries for rank {s.Length}");
        c.Set(0, c.Elem(0), s.Select((d, k) => SymDim.Mul(d, rep[k])).ToArray());
    }

    static void Pad(InferContext c)
    {
        var s = c.Shape(0);
        if (s == null) { c.Set(0, c.Elem(0), null); return; }
        long[]? pads = c.Opset < 11 ? c.IntsAttr("pads") : c.Ints(1);
        if (pads == null) { c.Set(0, c.Elem(0), s.Select(_ => Dim.Unknown).ToArray()); return; }
        long[] axes;
        if (c.Has(3))
        {
            var a = c.Ints(3);
            if (a == null) { c.Set(0, c.Elem(0), s.Select(_ => Dim.Unknown).ToArray()); return; }
            axes = a;
        }
        else axes = Enumerable.Range(0, s.Length).Select(x => (long)x).ToArray();
        if (pads.Length != 2 * axes.Length) c.Fail($"pads has {pads.Length} entries for {axes.Length} axes");
        var o = (Dim[])s.Clone();
        for (int j = 0; j < axes.Length; j++)
        {
            int a = c.Axis(axes[j], s.Length);
            o[a] = SymDim.Add(s[a], new Dim(pads[j] + pads[j + axes.Length]));
        }
        c.Set(0, c.Elem(0), o);
    }
}
