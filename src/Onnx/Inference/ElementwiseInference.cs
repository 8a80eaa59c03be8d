namespace OrtFinetune.Onnx;

/// <summary>Unary, binary (numpy broadcasting), comparison, Where, Cast, Dropout.</summary>
internal static class ElementwiseInference
{
    public static void Register(ShapeInferenceRules r)
    {
        r.Reg(c => Unary(c, null), "Sqrt", "Exp", "Log", "Reciprocal", "Erf", "Relu", "LeakyRelu", "Sigmoid",
            "Tanh", "Gelu", "Softplus", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softsign", "Mish", "ThresholdedRelu",
            "Floor", "Ceil", "Round", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
            "Clip", "Shrink", "BitwiseNot");
        r.Reg(c => Unary(c, d => d), "Identity");
        r.Reg(c => Unary(c, SymDim.Neg), "Neg");
        r.Reg(c => Unary(c, d => d.Value is long v ? new Dim(Math.Abs(v)) : SymDim.IsNonNegative(d) ? d : Dim.Unknown), "Abs");
        r.Reg(c => Unary(c, d => d.Value is long v ? new Dim(Math.Sign(v)) : Dim.Unknown), "Sign");
        r.Reg(c => Predicate(c), "IsNaN", "IsInf");
        r.Reg(c => { Unary(c, d => d.Value is long v ? new Dim(v == 0 ? 1 : 0) : Dim.Unknown); }, "Not");
        r.RegMs(c => Unary(c, null), "Gelu", "FastGelu", "BiasGelu", "QuickGelu");

        r.Reg(c => Binary(c, SymDim.Add), "Add");
        r.Reg(c => Binary(c, SymDim.Sub), "Sub");
        r.Reg(c => Binary(c, SymDim.Mul), "Mul");
        r.Reg(c => Binary(c, SymDim.Div), "Div");
        r.Reg(c => Binary(c, SymDim.Mod), "Mod");
        r.Reg(c => Binary(c, null), "Pow", "PRelu", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor");
        r.Reg(c => Binary(c, SymDim.Max), "Max");
        r.Reg(c => Binary(c, SymDim.Min), "Min");
        r.Reg(c => Binary(c, SymDim.Add), "Sum");
        r.Reg(c => Binary(c, null), "Mean");

        r.Reg(c => Compare(c, (a, b) => SymDim.Equal(a, b)), "Equal");
        r.Reg(c => Compare(c, (a, b) => a.Value is long x && b.Value is long y ? x < y : null), "Less");
        r.Reg(c => Compare(c, (a, b) => a.Value is long x && b.Value is long y ? x > y : null), "Greater");
        r.Reg(c => Compare(c, (a, b) => a.Value is long x && b.Value is long y ? x <= y : null), "LessOrEqual");
        r.Reg(c => Compare(c, (a, b) => a.Value is long x && b.Value is long y ? x >= y : null), "GreaterOrEqual");
        r.Reg(c => Compare(c, (a, b) => a.Value is long x && b.Value is long y ? (x != 0 && y != 0) : a.Value == 0 || b.Value == 0 ? false : null), "And");
        r.Reg(c => Compare(c, (a, b) => a.Value is long x && b.Value is long y ? (x != 0 || y != 0) : a.Value is > 0 || b.Value is > 0 ? true : null), "Or");
        r.Reg(c => Compare(c, (a, b) => a.Value is long x && b.Value is long y ? ((x != 0) ^ (y != 0)) : null), "Xor");

        r.Reg(Where, "Where");
        r.Reg(Cast, "Cast");
        r.Reg(c => Cast(c, c.Elem(1)), "CastLike");
        r.Reg(Dropout, "Dropout");
    }

    /// <summary>Output 0 like input 0; values mapped elementwise when <paramref name="f"/> is given.</summary>
    static void Unary(InferContext c, Func<Dim, Dim>? f)
    {
        var t = c.Type(0) ?? new TensorType(DataType.Undefined, null);
        var v = f == null ? null : c.Value(0)?.Select(f).ToArray();
        c.Set(0, t, v);
    }

    static void Predicate(InferContext c) => c.Set(0, DataType.Bool, c.Shape(0));

    /// <summary>Numpy broadcasting of all inputs' shapes; null when some rank is unknown.</summary>
    public static Dim[]? Broadcast(InferContext c, IEnumerable<int> inputs)
    {
        Dim[]? r = [];
        foreach (var i in inputs)
        {
            if (!c.Has(i)) continue;
            var s = c.Shape(i);
            if (s == null) return null;
            r = Broadcast(c, r!, s);
        }
        return r;
    }

    public static Dim[] Broadcast(InferContext c, Dim[] a, Dim[] b)
    {
        int n = Math.Max(a.Length, b.Length);
        var r = new Dim[n];
        for (int k = 0; k < n; k++)
        {
            int ia = k - (n - a.Length), ib = k - (n - b.Length);
            if (ia < 0) { r[k] = b[ib]; continue; }
            if (ib < 0) { r[k] = a[ia]; continue; }
            r[k] = BroadcastDim(a[ia], b[ib]) ?? c.FailWith<Dim>($"cannot broadcast [{string.Join(",", a)}] with [{string.Join(",", b)}]");
        }
        return r;
    }

    /// <summary>One broadcast dim; null when provably incompatible.</summary>
    public static Dim? BroadcastDim(Dim x, Dim y)
    {
        if (x.Value is long p && y.Value is long q) return p == q ? x : p == 1 ? y : q == 1 ? x : null;
        if (x.Value == 1) return y;
        if (y.Value == 1) return x;
        if (x.IsKnown) return x;   // y is symbolic/unknown: it must be 1 or equal to x
        if (y.IsKnown) return y;
        if (x.Symbol != null && x.Symbol == y.Symbol) return x;
        return Dim.Unknown;
    }

    /// <summary>Broadcasts small value arrays (rank &lt;= 1) elementwise.</summary>
    static Dim[]? MapValues(InferContext c, IReadOnlyList<int> inputs, Func<Dim, Dim, Dim> f)
    {
        var vals = new List<Dim[]>();
        foreach (var i in inputs)
        {
            var v = c.Value(i);
            if (v == null) return null;
            vals.Add(v);
        }
        if (vals.Count == 0) return null;
        int n = vals.Max(v => v.Length);
        if (vals.Any(v => v.Length != n && v.Length != 1)) return null;
        var r = new Dim[n];
        for (int k = 0; k < n; k++)
        {
            var acc = vals[0][vals[0].Length == 1 ? 0 : k];
            for (int j = 1; j < vals.Count; j++) acc = f(acc, vals[j][vals[j].Length == 1 ? 0 : k]);
            r[k] = acc;
        }
        return r;
    }

    static bool IsIntLike(DataType t) => t is DataType.Int64 or DataType.Int32 or DataType.Int16 or DataType.Int8 or DataType.UInt8 or DataType.Bool
        or DataType.UInt16 or DataType.UInt32 or DataType.UInt64;

    static void Binary(InferContext c, Func<Dim, Dim, Dim>? f)
    {
        var inputs = Enumerable.Range(0, c.InputCount).Where(c.Has).ToList();
        var et = inputs.Select(c.Elem).FirstOrDefault(t => t != DataType.Undefined);
        if (c.Node.OpType is "Pow" or "BitShift") et = c.Elem(0);
        var shape = Broadcast(c, inputs);
        Dim[]? v = f != null && IsIntLike(et) ? MapValues(c, inputs, f) : null;
        c.Set(0, et, shape, v);
    }

    static void Compare(InferContext c, Func<Dim, Dim, bool?> f)
    {
        var shape = Broadcast(c, [0, 1]);
        var v = MapValues(c, [0, 1], (a, b) => f(a, b) is bool r ? new Dim(r ? 1 : 0) : Dim.Unknown);
        c.Set(0, DataType.Bool, shape, v);
    }

    static void Where(InferContext c)
    {
        var shape = Broadcast(c, [0, 1, 2]);
        Dim[]? v = null;
        var cond = c.Value(0); var x = c.Value(1); var y = c.Value(2);
        if (cond != null && x != null && y != null)
        {
            int n = Math.Max(cond.Length, Math.Max(x.Length, y.Length));
            if (new[] { cond, x, y }.All(a => a.Length == 1 || a.Length == n))
            {
                v = new Dim[n];
                for (int k = 0; k < n; k++)
                {
                    var cd = cond[cond.Length == 1 ? 0 : k];
                    var xd = x[x.Length == 1 ? 0 : k]; var yd = y[y.Length == 1 ? 0 : k];
                    v[k] = cd.Value is long b ? (b != 0 ? xd : yd) : xd == yd ? xd : Dim.Unknown;
                }
            }
        }
        c.Set(0, c.Elem(1) != DataType.Undefined ? c.Elem(1) : c.Elem(2), shape, v);
    }

    static void Cast(InferContext c) => Cast(c, (DataType)c.Int("to", 0));

    static void Cast(InferContext c, DataType to)
    {
        Dim[]? v = null;
        var from = c.Elem(0);
        if (IsIntLike(to))
        {
            if (IsIntLike(from)) v = c.Value(0);
            else if (c.ConstDoubles(0) is double[] d && c.Rank(0) <= 1) v = d.Select(x => new Dim((long)x)).ToArray();
            if (v != null && to == DataType.Bool) v = v.Select(d => d.Value is long x ? new Dim(x != 0 ? 1 : 0) : SymDim.Equal(d, 0) == false ? new Dim(1) : Dim.Unknown).ToArray();
        }
        c.Set(0, to, c.Shape(0), v);
    }

    static void Dropout(InferContext c)
    {
        c.SameAs(0, 0);
        c.Set(1, DataType.Bool, c.Shape(0));
    }
}
