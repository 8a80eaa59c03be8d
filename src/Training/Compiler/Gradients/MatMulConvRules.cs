using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>MatMul (numpy semantics), Gemm and Conv.</summary>
public static class MatMulConvRules
{
    public static void Register(GradientRegistry r)
    {
        r.Add("MatMul", MatMul);
        r.Add("Gemm", Gemm);
        r.Add("Conv", Conv);
    }

    // ------------------------------------------------------------------ MatMul

    /// <summary>
    /// Y = A @ B: dA = dY @ Bᵀ, dB = Aᵀ @ dY (last two axes), summed over broadcast batch axes.
    /// 1-D operands are promoted as numpy does (A: [K] -> [1,K], B: [K] -> [K,1]).
    /// When B is a 2-D weight, dB is one 2-D product of the flattened A [-1,K] and dY [-1,N].
    /// </summary>
    static void MatMul(GradientContext c)
    {
        var (g, a, w) = (c.G, c.I(0), c.I(1));
        int ra = c.Rank(a), rb = c.Rank(w);
        if (ra == 1 && rb == 1)
        {
            // dot product (g is 0-D)
            c.SetGI(0, () => g * w);
            c.SetGI(1, () => g * a);
        }
        else if (ra == 1)
        {
            // Y[..., n] = Σ_k A[k] B[..., k, n]: [K,N] @ [N] -> [K], or [..., K, 1] summed over the batch
            c.SetGI(0, () => rb == 2 ? w.MatMul(g) : w.MatMul(g.Unsqueeze(-1)).Reshape(Flat2(c, a)).Sum([0], keepDims: false));
            c.SetGI(1, () => a.Unsqueeze(-1) * g.Unsqueeze(-2)); // [K,1] * [...,1,N]
        }
        else if (rb == 1)
        {
            // Y[..., m] = Σ_k A[..., m, k] B[k]: [...,M,1] * [K]; [M] @ [M,K] -> [K]
            c.SetGI(0, () => g.Unsqueeze(-1) * w);
            c.SetGI(1, () => ra == 2 ? g.MatMul(a) : g.Reshape(c.B.Ints(-1)).MatMul(a.Reshape(Flat2(c, a))));
        }
        else if (rb == 2)
        {
            // the common "activations @ weight" case: no batch axes on B, nothing to reduce but the flattened rows
            c.SetGI(0, () => ra == 2 ? Gemm2(g, w, 0, 1) : g.MatMul(w.Transpose(1, 0)));
            c.SetGI(1, () => ra == 2 ? Gemm2(a, g, 1, 0) : Gemm2(a.Reshape(Flat2(c, a)), g.Reshape(Flat2(c, c.O(0))), 1, 0));
        }
        else
        {
            // batched: results are shaped batch(Y) + matrix, then summed down to each operand's shape
            var yBatch = c.ShapeOf(c.O(0))[..^2];
            c.SetGI(0, () => UnbroadcastBatch(c, g.MatMul(TransposeLast2(w, rb)), a, yBatch));
            c.SetGI(1, () => UnbroadcastBatch(c, TransposeLast2(a, ra).MatMul(g), w, yBatch));
        }
    }

    static V Gemm2(V x, V y, long transA, long transB, float alpha = 1f)
    {
        NodeAttribute[] attrs = [NodeAttribute.Of("transA", transA), NodeAttribute.Of("transB", transB)];
        return x.Op("Gemm", [x, y], null, alpha == 1f ? attrs : [.. attrs, NodeAttribute.Of("alpha", alpha)]);
    }

    static V TransposeLast2(V x, int rank)
    {
        var perm = GradientContext.Axes(0, rank);
        (perm[rank - 2], perm[rank - 1]) = (perm[rank - 1], perm[rank - 2]);
        return x.Transpose(perm);
    }

    /// <summary>Shape [-1, last dim of <paramref name="x"/>] (static when the last dim is known).</summary>
    static string Flat2(GradientContext c, string x) =>
        c.StaticDim(x, -1) is { } k ? c.B.Ints(-1, k) : c.B.Concat(0, c.B.Ints(-1), c.B.ShapeSlice(x, -1, long.MaxValue));

    /// <summary>
    /// Sums a gradient shaped batch(Y) + [r, s] down to <paramref name="target"/> (batch(target) + [r, s]):
    /// over the leading axes the target lacks and the batch axes where it has size 1.
    /// </summary>
    static V UnbroadcastBatch(GradientContext c, V grad, V target, Dim[] yBatch)
    {
        var ts = c.ShapeOf(target);
        c.B.SetType(grad, new TensorType(c.ElemType(target), [.. yBatch, ts[^2], ts[^1]]));
        return c.Unbroadcast(grad, target, shapedLike: grad);
    }

    // ------------------------------------------------------------------ Gemm

    /// <summary>
    /// Y = alpha·A'B' + beta·C with A' = transA ? Aᵀ : A, B' = transB ? Bᵀ : B:
    /// dA' = alpha·dY B'ᵀ, dB' = alpha·A'ᵀ dY, dC = beta·unbroadcast(dY). Each is one Gemm with trans flags.
    /// </summary>
    static void Gemm(GradientContext c)
    {
        var (g, a, w) = (c.G, c.I(0), c.I(1));
        long tA = c.GetInt("transA", 0), tB = c.GetInt("transB", 0);
        float alpha = c.GetFloat("alpha", 1f), beta = c.GetFloat("beta", 1f);
        c.SetGI(0, () => tA == 0 ? Gemm2(g, w, 0, 1 - tB, alpha) : Gemm2(w, g, tB, 1, alpha));
        c.SetGI(1, () => tB == 0 ? Gemm2(a, g, 1 - tA, 0, alpha) : Gemm2(g, a, 1, tA, alpha));
        c.SetGI(2, () => { var dc = c.Unbroadcast(g, c.I(2)); return beta != 1f ? dc * beta : dc; });
    }

    // ------------------------------------------------------------------ Conv

    /// <summary>Static geometry of a Conv (or pooling) node: spatial sizes, kernel, strides, pads, dilations, output sizes.</summary>
    internal sealed record Geometry(long[] In, long[] Kernel, long[] Strides, long[] PadsBegin, long[] PadsEnd, long[] Dilations, long[] Out)
    {
        public int N => In.Length;
        public long[] Pads => [.. PadsBegin, .. PadsEnd];
    }

    /// <summary>
    /// Reads kernel/strides/pads/dilations/auto_pad for a node whose input 0 is [N, C, spatial...]
    /// with static spatial dims. SAME_UPPER/SAME_LOWER are resolved to explicit pads.
    /// </summary>
    internal static Geometry ReadGeometry(GradientContext c, long[] kernel, bool ceilMode = false)
    {
        var node = c.Node;
        var xs = c.ShapeOf(c.I(0));
        int n = xs.Length - 2;
        if (n < 1) throw new CompileException($"{node.Describe()}: input '{c.I(0)}' must have rank >= 3 [N, C, spatial...], got {xs.Length}");
        var spatial = new long[n];
        for (int i = 0; i < n; i++)
            spatial[i] = xs[i + 2].Value ?? throw new CompileException(
                $"{node.Describe()}: the gradient needs static spatial dimensions, but input '{c.I(0)}' has shape [{string.Join(",", xs.Select(d => d.ToString()))}] (give the model static image sizes)");
        if (kernel.Length != n) throw new CompileException($"{node.Describe()}: kernel rank {kernel.Length} does not match {n} spatial dims");
        long[] Get(string name, long dflt, int len)
        {
            var v = node.GetInts(name);
            if (v == null || v.Length == 0) return Enumerable.Repeat(dflt, len).ToArray();
            if (v.Length != len) throw new CompileException($"{node.Describe()}: attribute {name} has {v.Length} values, expected {len}");
            return v;
        }
        var strides = Get("strides", 1, n);
        var dil = Get("dilations", 1, n);
        var pads = Get("pads", 0, 2 * n);
        var pb = pads[..n];
        var pe = pads[n..];
        var autoPad = node.GetString("auto_pad", "NOTSET");
        var outs = new long[n];
        for (int i = 0; i < n; i++)
        {
            long eff = (kernel[i] - 1) * dil[i] + 1;
            switch (autoPad)
            {
                case "NOTSET" or "":
                {
                    long num = spatial[i] + pb[i] + pe[i] - eff;
                    outs[i] = (ceilMode ? (num + strides[i] - 1) / strides[i] : num / strides[i]) + 1;
                    if (ceilMode && (outs[i] - 1) * strides[i] >= spatial[i] + pb[i]) outs[i]--; // last window must start inside
                    break;
                }
                case "VALID":
                    pb[i] = pe[i] = 0;
                    outs[i] = (spatial[i] - eff) / strides[i] + 1;
                    break;
                case "SAME_UPPER" or "SAME_LOWER":
                {
                    outs[i] = (spatial[i] + strides[i] - 1) / strides[i];
                    long total = Math.Max(0, (outs[i] - 1) * strides[i] + eff - spatial[i]);
                    long small = total / 2, big = total - small;
                    (pb[i], pe[i]) = autoPad == "SAME_UPPER" ? (small, big) : (big, small);
                    break;
                }
                default: throw new CompileException($"{node.Describe()}: unsupported auto_pad '{autoPad}'");
            }
        }
        // prefer the recorded output size (it reflects the runtime's rounding rules)
        var ys = c.Graph.TypeOf(c.O(0))?.Shape;
        if (ys is { } s && s.Length == n + 2)
            for (int i = 0; i < n; i++) if (s[i + 2].Value is { } v) outs[i] = v;
        return new Geometry(spatial, kernel, strides, pb, pe, dil, outs);
    }

    /// <summary>
    /// Y = Conv(X, W) + b with X [N, C, S...], W [M, C/G, k...]:
    /// dX = ConvTranspose(dY, W) with the same strides/pads/dilations/group and output_padding that restores S;
    /// dW = Conv(Xᵀ, dYᵀ) with batch acting as channels (stride and dilation swapped), sliced to k;
    /// db = Σ dY over batch and spatial axes.
    /// </summary>
    static void Conv(GradientContext c)
    {
        var (b, node, g, x, w) = (c.B, c.Node, c.G, c.I(0), c.I(1));
        var ws = c.ShapeOf(w);
        int n = ws.Length - 2;
        var kernel = node.GetInts("kernel_shape") is { Length: > 0 } ks ? ks
            : ws[2..].Select(d => d.Value ?? throw new CompileException($"{node.Describe()}: the gradient needs a static kernel shape (weight '{w}' is [{string.Join(",", ws.Select(x => x.ToString()))}])")).ToArray();
        var geo = ReadGeometry(c, kernel);
        long group = c.GetInt("group", 1);
        var spatialAxes = GradientContext.Axes(2, n + 2);

        if (c.Need(0))
        {
            var outPad = new long[n];
            for (int i = 0; i < n; i++)
            {
                long full = geo.Strides[i] * (geo.Out[i] - 1) + (kernel[i] - 1) * geo.Dilations[i] + 1 - geo.PadsBegin[i] - geo.PadsEnd[i];
                outPad[i] = geo.In[i] - full;
                if (outPad[i] < 0) throw new CompileException($"{node.Describe()}: inconsistent geometry (output_padding {outPad[i]} on spatial axis {i})");
            }
            var attrs = new List<NodeAttribute>
            {
                NodeAttribute.Of("kernel_shape", kernel), NodeAttribute.Of("strides", geo.Strides), NodeAttribute.Of("pads", geo.Pads),
                NodeAttribute.Of("dilations", geo.Dilations), NodeAttribute.Of("group", group),
            };
            if (outPad.Any(p => p != 0)) attrs.Add(NodeAttribute.Of("output_padding", outPad));
            c.SetGI(0, b.Op("ConvTranspose", [g, w], attrs.ToArray()));
        }

        if (c.Need(1))
        {
            long cIn = c.StaticDim(x, 1) ?? c.StaticDim(w, 1) * group
                ?? throw new CompileException($"{node.Describe()}: the weight gradient needs the static channel count of '{x}'");
            long cg = cIn / group;
            var swap01 = new long[] { 1, 0 }.Concat(spatialAxes).ToArray();
            string xt;
            if (group == 1) xt = b.Transpose(x, swap01); // [C, N, S...]
            else
            {
                // [N, G*Cg, S...] -> [N, G, Cg, S...] -> [Cg, G, N, S...] -> [Cg, G*N, S...]
                var split = b.Reshape(x, b.Ints([0, group, cg, .. geo.In]));
                var perm = new long[] { 2, 1, 0 }.Concat(spatialAxes.Select(a => a + 1)).ToArray();
                xt = b.Reshape(b.Transpose(split, perm), b.Ints([cg, -1, .. geo.In]));
            }
            var gt = b.Transpose(g, swap01); // [M, N, O...]
            var dw = b.Op("Conv", [xt, gt],
                NodeAttribute.Of("strides", geo.Dilations), NodeAttribute.Of("dilations", geo.Strides),
                NodeAttribute.Of("pads", geo.Pads), NodeAttribute.Of("group", group)); // [Cg, M, k'...]
            dw = b.Transpose(dw, swap01); // [M, Cg, k'...]
            var kFull = new long[n];
            for (int i = 0; i < n; i++)
                kFull[i] = (geo.In[i] + geo.PadsBegin[i] + geo.PadsEnd[i] - ((geo.Out[i] - 1) * geo.Strides[i] + 1)) / geo.Dilations[i] + 1;
            if (!kFull.SequenceEqual(kernel))
                dw = b.Slice(dw, new long[n], kernel, spatialAxes);
            c.SetGI(1, dw);
        }

        c.SetGI(2, () => g.Sum([0, .. spatialAxes], keepDims: false));
    }
}
