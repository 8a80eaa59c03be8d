namespace OrtFinetune.Onnx;

/// <summary>MatMul, Gemm, Conv, ConvTranspose, pools, normalizations, softmax family, losses.</summary>
internal static class NnInference
{
    public static void Register(ShapeInferenceRules r)
    {
        r.Reg(MatMul, "MatMul");
        r.Reg(Gemm, "Gemm");
        r.Reg(Conv, "Conv");
        r.Reg(ConvTranspose, "ConvTranspose");
        r.Reg(Pool, "MaxPool", "AveragePool", "LpPool");
        r.Reg(GlobalPool, "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool");
        r.Reg(c => c.SameAs(0, 0), "Softmax", "LogSoftmax", "Hardmax", "InstanceNormalization",
            "GroupNormalization", "LRN", "MeanVarianceNormalization", "CumSum", "Trilu");
        r.Reg(LayerNorm, "LayerNormalization");
        r.RegMs(LayerNorm, "SimplifiedLayerNormalization");
        r.Reg(BatchNorm, "BatchNormalization");
        r.Reg(c => Loss(c, true), "SoftmaxCrossEntropyLoss");
        r.Reg(c => Loss(c, false), "NegativeLogLikelihoodLoss");
    }

    static string Fmt(Dim[]? s) => s == null ? "[?]" : $"[{string.Join(",", s)}]";

    static void CheckSame(InferContext c, Dim a, Dim b, string what, Dim[]? sa, Dim[]? sb)
    {
        if (a.Value is long x && b.Value is long y && x != y)
            c.Fail($"{what} mismatch: {x} vs {y} (shapes {Fmt(sa)} and {Fmt(sb)})");
    }

    static void MatMul(InferContext c)
    {
        var a = c.Shape(0); var b = c.Shape(1);
        var et = c.Elem(0);
        if (a == null || b == null) { c.Set(0, et, null); return; }
        if (a.Length == 0 || b.Length == 0) c.Fail("MatMul of a scalar");
        var a2 = a.Length == 1 ? new[] { new Dim(1), a[0] } : a;
        var b2 = b.Length == 1 ? new[] { b[0], new Dim(1) } : b;
        CheckSame(c, a2[^1], b2[^2], "MatMul inner dimension (K)", a, b);
        var batch = ElementwiseInference.Broadcast(c, a2[..^2], b2[..^2]);
        var o = batch.ToList();
        if (a.Length > 1) o.Add(a2[^2]);
        if (b.Length > 1) o.Add(b2[^1]);
        c.Set(0, et, o.ToArray());
    }

    static void Gemm(InferContext c)
    {
        var a = c.Shape(0); var b = c.Shape(1);
        var et = c.Elem(0);
        if (a == null || b == null) { c.Set(0, et, [Dim.Unknown, Dim.Unknown]); return; }
        if (a.Length != 2 || b.Length != 2) c.Fail($"Gemm needs 2-D inputs, got {Fmt(a)} and {Fmt(b)}");
        bool ta = c.Int("transA", 0) != 0, tb = c.Int("transB", 0) != 0;
        Dim m = ta ? a[1] : a[0], ka = ta ? a[0] : a[1];
        Dim kb = tb ? b[1] : b[0], n = tb ? b[0] : b[1];
        CheckSame(c, ka, kb, "Gemm inner dimension (K)", a, b);
        var o = new[] { m, n };
        if (c.Has(2) && c.Shape(2) is Dim[] cs)
        {
            if (cs.Length > 2) c.Fail($"Gemm bias C {Fmt(cs)} has rank > 2");
            var bc = ElementwiseInference.Broadcast(c, o, cs);   // validates unidirectional broadcast
            for (int k = 0; k < 2; k++)
                if (!o[k].IsKnown && o[k].Symbol == null && bc[k].Value is long v && v != 1) o[k] = bc[k];
        }
        c.Set(0, et, o);
    }

    /// <summary>Spatial output size of a conv/pool window.</summary>
    static Dim WindowOut(Dim input, long k, long stride, long dil, long padBegin, long padEnd, string autoPad, bool ceil)
    {
        long eff = dil * (k - 1) + 1;
        if (autoPad is "SAME_UPPER" or "SAME_LOWER")
            return input.Value is long iv ? new Dim((iv + stride - 1) / stride) : stride == 1 ? input : Dim.Unknown;
        if (autoPad == "VALID") { padBegin = 0; padEnd = 0; }
        if (input.Value is long x)
        {
            long num = x + padBegin + padEnd - eff;
            if (num < 0) return new Dim(-1);
            long o = (ceil ? (num + stride - 1) / stride : num / stride) + 1;
            if (ceil && (o - 1) * stride >= x + padBegin) o--;
            return new Dim(o);
        }
        if (stride == 1) return SymDim.Add(input, new Dim(padBegin + padEnd - eff + 1));
        return Dim.Unknown;
    }

    static long[] AttrOr(InferContext c, string name, int n, long dflt) => c.IntsAttr(name) ?? Enumerable.Repeat(dflt, n).ToArray();

    static void Conv(InferContext c)
    {
        var x = c.Shape(0); var w = c.Shape(1);
        var et = c.Elem(0);
        if (x == null) { c.Set(0, et, w?.Select(_ => Dim.Unknown).ToArray()); return; }
        if (x.Length < 3) c.Fail($"input {Fmt(x)} has no spatial dims");
        int sp = x.Length - 2;
        long group = c.Int("group", 1);
        var kernel = c.IntsAttr("kernel_shape") ?? (w != null && w.Skip(2).All(d => d.IsKnown) ? w.Skip(2).Select(d => d.Value!.Value).ToArray() : null);
        if (w != null)
        {
            if (w.Length != x.Length) c.Fail($"weight {Fmt(w)} and input {Fmt(x)} ranks differ");
            if (x[1].Value is long cin && w[1].Value is long wc && cin != wc * group)
                c.Fail($"input channels {cin} do not match weight {Fmt(w)} with group {group}");
        }
        var o = new Dim[x.Length];
        o[0] = x[0];
        o[1] = w?[0] ?? Dim.Unknown;
        Spatial(c, x, kernel, sp, o, false);
        c.Set(0, et, o);
    }

    static void Spatial(InferContext c, Dim[] x, long[]? kernel, int sp, Dim[] o, bool ceilMode)
    {
        var strides = AttrOr(c, "strides", sp, 1);
        var dil = AttrOr(c, "dilations", sp, 1);
        var pads = AttrOr(c, "pads", 2 * sp, 0);
        var autoPad = c.Node.GetString("auto_pad", "NOTSET");
        if (strides.Length != sp || dil.Length != sp || pads.Length != 2 * sp || (kernel != null && kernel.Length != sp))
            c.Fail($"strides/dilations/pads/kernel_shape lengths do not fit {sp} spatial dims");
        for (int k = 0; k < sp; k++)
        {
            if (kernel == null) { o[2 + k] = Dim.Unknown; continue; }
            var d = WindowOut(x[2 + k], kernel[k], strides[k], dil[k], pads[k], pads[k + sp], autoPad, ceilMode);
            if (d.Value < 1) c.Fail($"spatial dim {k} of input {Fmt(x)} is smaller than the window (kernel {kernel[k]}, dilation {dil[k]}, pads {pads[k]}+{pads[k + sp]})");
            o[2 + k] = d;
        }
    }

    static void ConvTranspose(InferContext c)
    {
        var x = c.Shape(0); var w = c.Shape(1);
        var et = c.Elem(0);
        if (x == null) { c.Set(0, et, null); return; }
        int sp = x.Length - 2;
        long group = c.Int("group", 1);
        var kernel = c.IntsAttr("kernel_shape") ?? (w != null && w.Skip(2).All(d => d.IsKnown) ? w.Skip(2).Select(d => d.Value!.Value).ToArray() : null);
        if (w != null) CheckSame(c, x[1], w[0], "ConvTranspose input channels", x, w);
        var o = new Dim[x.Length];
        o[0] = x[0];
        o[1] = w != null ? SymDim.Mul(w[1], new Dim(group)) : Dim.Unknown;
        var strides = AttrOr(c, "strides", sp, 1);
        var dil = AttrOr(c, "dilations", sp, 1);
        var pads = AttrOr(c, "pads", 2 * sp, 0);
        var outPad = AttrOr(c, "output_padding", sp, 0);
        var outShape = c.IntsAttr("output_shape");
        var autoPad = c.Node.GetString("auto_pad", "NOTSET");
        for (int k = 0; k < sp; k++)
        {
            if (outShape != null) { o[2 + k] = outShape[outShape.Length - sp + k]; continue; }
            if (kernel == null) { o[2 + k] = Dim.Unknown; continue; }
            if (autoPad is "SAME_UPPER" or "SAME_LOWER") { o[2 + k] = SymDim.Mul(x[2 + k], new Dim(strides[k])); continue; }
            long pb = autoPad == "VALID" ? 0 : pads[k], pe = autoPad == "VALID" ? 0 : pads[k + sp];
            var scaled = SymDim.Mul(SymDim.Sub(x[2 + k], new Dim(1)), new Dim(strides[k]));
            o[2 + k] = SymDim.Add(scaled, new Dim(outPad[k] + (kernel[k] - 1) * dil[k] + 1 - pb - pe));
        }
        c.Set(0, et, o);
    }

    static void Pool(InferContext c)
    {
        var x = c.Shape(0);
        var et = c.Elem(0);
        if (x == null) { c.Set(0, et, null); c.Set(1, DataType.Int64, null); return; }
        if (x.Length < 3) c.Fail($"input {Fmt(x)} has no spatial dims");
        int sp = x.Length - 2;
        var kernel = c.IntsAttr("kernel_shape") ?? c.FailWith<long[]>("kernel_shape is required");
        var o = new Dim[x.Length];
        o[0] = x[0]; o[1] = x[1];
        Spatial(c, x, kernel, sp, o, c.Int("ceil_mode", 0) != 0);
        c.Set(0, et, o);
        c.Set(1, DataType.Int64, o);
    }

    static void GlobalPool(InferContext c)
    {
        var x = c.Shape(0);
        c.Set(0, c.Elem(0), x?.Select((d, k) => k < 2 ? d : new Dim(1)).ToArray());
    }

    static void LayerNorm(InferContext c)
    {
        c.SameAs(0, 0);
        var x = c.Shape(0);
        var st = (DataType)c.Int("stash_type", (long)DataType.Float);
        Dim[]? stat = null;
        if (x != null)
        {
            int axis = c.Axis(c.Int("axis", -1), x.Length);
            stat = x.Select((d, k) => k < axis ? d : new Dim(1)).ToArray();
            if (c.Shape(1) is Dim[] sc && sc.Length > x.Length - axis) c.Fail($"scale {Fmt(sc)} has more dims than the normalized part of {Fmt(x)}");
        }
        c.Set(1, st, stat);
        c.Set(2, st, stat);
    }

    static void BatchNorm(InferContext c)
    {
        c.SameAs(0, 0);
        var x = c.Shape(0);
        Dim ch = x != null && x.Length >= 2 ? x[1] : c.Shape(1) is { Length: 1 } s ? s[0] : Dim.Unknown;
        if (x != null && x.Length >= 2 && c.Shape(1) is { Length: 1 } sc) CheckSame(c, x[1], sc[0], "BatchNormalization channels", x, sc);
        var st = c.Elem(3) != DataType.Undefined ? c.Elem(3) : c.Elem(0);
        for (int i = 1; i < c.OutputCount; i++) c.Set(i, st, [ch]);
    }

    static void Loss(InferContext c, bool softmax)
    {
        var scores = c.Shape(0); var labels = c.Shape(1);
        var et = c.Elem(0);
        if (scores != null && labels != null)
        {
            if (labels.Length != scores.Length - 1) c.Fail($"labels {Fmt(labels)} do not fit scores {Fmt(scores)}");
            CheckSame(c, scores[0], labels[0], "batch", scores, labels);
            for (int k = 2; k < scores.Length; k++) CheckSame(c, scores[k], labels[k - 1], $"dim {k}", scores, labels);
        }
        var red = c.Node.GetString("reduction", "mean");
        Dim[]? o = red == "none" ? labels ?? (scores == null ? null : scores.Where((_, k) => k != 1).ToArray()) : [];
        c.Set(0, et, o);
        if (softmax) c.Set(1, et, scores);
    }
}
