using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Gradients;

public class MatMulConvGradientTests(ITestOutputHelper log)
{
    static string S(long[] s) => "[" + string.Join(",", s) + "]";

    // ------------------------------------------------------------------ MatMul

    public static TheoryData<long[], long[]> MatMulShapes => new()
    {
        { [3, 4], [4, 5] },
        { [2, 3, 4], [4, 5] },          // activations @ 2-D weight (flattened Gemm path)
        { [2, 2, 3, 4], [4, 5] },
        { [3, 4], [2, 4, 5] },          // 2-D left, batched right
        { [2, 3, 4], [2, 4, 5] },       // same batch
        { [2, 1, 3, 4], [5, 4, 6] },    // broadcast on both sides
        { [1, 3, 4], [2, 4, 5] },
        { [4], [2, 4, 5] },             // 1-D left
        { [4], [4, 5] },
        { [3, 4], [4] },                // 1-D right
        { [2, 3, 4], [4] },
        { [4], [4] },                   // dot
        { [3, 1], [1, 5] },             // K = 1 (outer product)
    };

    [Theory, MemberData(nameof(MatMulShapes))]
    public void MatMul(long[] a, long[] b)
    {
        var r = GradCheck.Run(new GradCase
        {
            OpType = "MatMul", Seed = 101,
            Inputs = [new("a", GradCheck.Randn(101, a)), new("b", GradCheck.Randn(102, b))],
        });
        log.WriteLine($"MatMul {S(a)} x {S(b)}: {r}");
    }

    [Fact]
    public void MatMulWeightOnlyUsesOneGemm()
    {
        // (B, T, C) @ (C, D) with only the weight trainable: dW must be a single 2-D Gemm, no ReduceSum.
        var r = GradCheck.Run(new GradCase
        {
            OpType = "MatMul", Seed = 103,
            Inputs = [new("x", GradCheck.Randn(103, 2, 3, 4), Differentiable: false), new("w", GradCheck.Randn(104, 4, 5))],
        });
        log.WriteLine($"MatMul weight only: {r}");

        var m = new Model();
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("x", new TensorType(DataType.Float, [new Dim("batch"), 3, 4])));
        g.Inputs.Add(new ValueInfo("w", TensorType.Of(DataType.Float, 4, 5)));
        g.Nodes.Add(new Node("MatMul", ["x", "w"], ["y"], "mm"));
        g.Nodes.Add(new Node("ReduceSum", ["y"], ["loss"], "rs") { }.Set(NodeAttribute.Of("keepdims", 0L)));
        g.ValueTypes["y"] = new TensorType(DataType.Float, [new Dim("batch"), 3, 5]);
        g.ValueTypes["loss"] = new TensorType(DataType.Float, []);
        int before = g.Nodes.Count;
        OrtFinetune.Training.Compiler.Autodiff.Autodiff.Differentiate(g, 17, "loss", ["w"]);
        var ops = g.Nodes.Skip(before).Select(n => n.OpType).ToList();
        log.WriteLine(string.Join(" ", ops));
        Assert.Contains("Gemm", ops);
        Assert.DoesNotContain("MatMul", ops);
    }

    [Fact]
    public void MatMulAttentionSymbolicBatchNeedsNoReduction()
    {
        // (b, h, T, D) @ (b, h, D, T) with a symbolic batch: same batch on both sides, nothing to sum.
        var m = new Model();
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("q", new TensorType(DataType.Float, [new Dim("b"), 2, 3, 4])));
        g.Inputs.Add(new ValueInfo("k", new TensorType(DataType.Float, [new Dim("b"), 2, 4, 3])));
        g.Nodes.Add(new Node("MatMul", ["q", "k"], ["y"], "mm"));
        g.Nodes.Add(new Node("ReduceSumSquare", ["y"], ["loss"], "rs").Set(NodeAttribute.Of("keepdims", 0L)));
        g.ValueTypes["y"] = new TensorType(DataType.Float, [new Dim("b"), 2, 3, 3]);
        g.ValueTypes["loss"] = new TensorType(DataType.Float, []);
        int before = g.Nodes.Count;
        var grads = OrtFinetune.Training.Compiler.Autodiff.Autodiff.Differentiate(g, 17, "loss", ["q", "k"]);
        var ops = g.Nodes.Skip(before).Select(n => n.OpType).ToList();
        log.WriteLine(string.Join(" ", ops));
        Assert.DoesNotContain("ReduceSum", ops);
        g.Outputs.Add(new ValueInfo("loss", new TensorType(DataType.Float, [])));
        foreach (var gr in grads) g.Outputs.Add(new ValueInfo(gr, new TensorType(DataType.Float, null)));
        using var r = new OrtRunner(m);
        var outs = r.Run(new Dictionary<string, HostTensor>
        {
            ["q"] = GradCheck.Randn(7, 5, 2, 3, 4).As(DataType.Float), ["k"] = GradCheck.Randn(8, 5, 2, 4, 3).As(DataType.Float),
        });
        Assert.Equal(new long[] { 5, 2, 3, 4 }, outs[grads[0]].Shape);
        Assert.Equal(new long[] { 5, 2, 4, 3 }, outs[grads[1]].Shape);
    }

    // ------------------------------------------------------------------ Gemm

    [Theory]
    [InlineData(0, 0)]
    [InlineData(0, 1)]
    [InlineData(1, 0)]
    [InlineData(1, 1)]
    public void Gemm(long transA, long transB)
    {
        const long M = 3, K = 4, N = 5;
        long[] a = transA == 0 ? [M, K] : [K, M];
        long[] b = transB == 0 ? [K, N] : [N, K];
        foreach (var cShape in new long[][] { [N], [1, N], [M, N], [M, 1], [] })
        {
            var r = GradCheck.Run(new GradCase
            {
                OpType = "Gemm", Seed = 111,
                Attributes = [NodeAttribute.Of("transA", transA), NodeAttribute.Of("transB", transB), NodeAttribute.Of("alpha", 0.7f), NodeAttribute.Of("beta", 1.3f)],
                Inputs = [new("a", GradCheck.Randn(111, a)), new("b", GradCheck.Randn(112, b)), new("c", GradCheck.Randn(113, cShape))],
            });
            log.WriteLine($"Gemm tA={transA} tB={transB} C={S(cShape)}: {r}");
        }
        var r2 = GradCheck.Run(new GradCase
        {
            OpType = "Gemm", Seed = 114,
            Attributes = [NodeAttribute.Of("transA", transA), NodeAttribute.Of("transB", transB)],
            Inputs = [new("a", GradCheck.Randn(114, a)), new("b", GradCheck.Randn(115, b))],
        });
        log.WriteLine($"Gemm tA={transA} tB={transB} no C: {r2}");
    }

    // ------------------------------------------------------------------ Conv

    public sealed record ConvSpec(string Name, long[] X, long[] W, long[] Strides, long[] Pads, long[] Dilations, long Group, bool Bias, string AutoPad = "NOTSET")
    {
        public override string ToString() => Name;
    }

    public static TheoryData<ConvSpec> ConvCases => new()
    {
        new("patch-embed k4 s4", [2, 3, 8, 8], [6, 3, 4, 4], [4, 4], [0, 0, 0, 0], [1, 1], 1, true),
        new("resnet k3 s1 p1", [2, 3, 6, 6], [4, 3, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1, false),
        new("resnet k3 s2 p1", [2, 3, 7, 7], [4, 3, 3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 1, false),
        new("resnet k3 s2 p1 even", [1, 2, 8, 8], [3, 2, 3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 1, true),
        new("resnet k1 s2 p0", [2, 4, 7, 7], [5, 4, 1, 1], [2, 2], [0, 0, 0, 0], [1, 1], 1, false),
        new("resnet stem k7 s2 p3", [1, 3, 11, 11], [4, 3, 7, 7], [2, 2], [3, 3, 3, 3], [1, 1], 1, false),
        new("asymmetric pads, rect stride", [2, 2, 7, 6], [3, 2, 3, 2], [2, 1], [0, 1, 2, 0], [1, 1], 1, true),
        new("dilation 2", [1, 2, 9, 8], [3, 2, 3, 3], [1, 2], [1, 2, 1, 0], [2, 2], 1, true),
        new("groups 2", [2, 4, 6, 6], [6, 2, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 2, true),
        new("groups 2 strided", [1, 6, 7, 7], [4, 3, 3, 3], [2, 2], [1, 0, 0, 1], [1, 1], 2, false),
        new("depthwise", [2, 3, 6, 6], [3, 1, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 3, true),
        new("depthwise x2 s2", [1, 3, 7, 7], [6, 1, 3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 3, false),
        new("same_upper s2", [1, 2, 7, 7], [3, 2, 3, 3], [2, 2], [0, 0, 0, 0], [1, 1], 1, true, "SAME_UPPER"),
        new("same_lower k4", [1, 2, 6, 6], [3, 2, 4, 4], [1, 1], [0, 0, 0, 0], [1, 1], 1, false, "SAME_LOWER"),
        new("valid", [1, 2, 6, 6], [3, 2, 3, 3], [2, 2], [0, 0, 0, 0], [1, 1], 1, false, "VALID"),
        new("1-D", [2, 3, 9], [4, 3, 3], [2], [1, 0], [1], 1, true),
        new("1-D grouped dilated", [1, 4, 10], [4, 2, 3], [1], [2, 1], [2], 2, true),
    };

    [Theory, MemberData(nameof(ConvCases))]
    public void Conv(ConvSpec s)
    {
        var attrs = new List<NodeAttribute> { NodeAttribute.Of("strides", s.Strides), NodeAttribute.Of("dilations", s.Dilations), NodeAttribute.Of("group", s.Group) };
        if (s.AutoPad == "NOTSET") attrs.Add(NodeAttribute.Of("pads", s.Pads));
        else attrs.Add(NodeAttribute.Of("auto_pad", s.AutoPad));
        var inputs = new List<GradInput> { new("x", GradCheck.Randn(121, s.X)), new("w", GradCheck.Randn(122, s.W)) };
        if (s.Bias) inputs.Add(new("b", GradCheck.Randn(123, s.W[0])));
        var r = GradCheck.Run(new GradCase { OpType = "Conv", Seed = 121, Attributes = attrs.ToArray(), Inputs = inputs.ToArray(), MaxProbes = 400 });
        log.WriteLine($"Conv {s.Name} x={S(s.X)} w={S(s.W)}: {r}");
    }

    /// <summary>
    /// The float32 FD check above is noisy at the 1e-3 level; this compares the compiled gradients (run in float32
    /// by ORT) with a direct float64 reference of the adjoint loops, at 1e-4 relative accuracy, for every element.
    /// </summary>
    [Theory, MemberData(nameof(ConvCases))]
    public void ConvMatchesReference(ConvSpec s)
    {
        if (s.AutoPad is not ("NOTSET" or "VALID")) return;
        var pads = s.AutoPad == "VALID" ? new long[s.Pads.Length] : s.Pads;
        var m = new Model();
        var g = m.Graph;
        long[] y = [s.X[0], s.W[0], .. Enumerable.Range(0, s.X.Length - 2).Select(i =>
            (s.X[i + 2] + pads[i] + pads[i + s.X.Length - 2] - ((s.W[i + 2] - 1) * s.Dilations[i] + 1)) / s.Strides[i] + 1)];
        var x = GradCheck.Randn(131, s.X);
        var w = GradCheck.Randn(132, s.W);
        var cot = GradCheck.Randn(133, y);
        g.Inputs.Add(new ValueInfo("x", TensorType.Of(DataType.Float, s.X)));
        g.Inputs.Add(new ValueInfo("w", TensorType.Of(DataType.Float, s.W)));
        g.Inputs.Add(new ValueInfo("b", TensorType.Of(DataType.Float, s.W[0])));
        g.Initializers["cot"] = Tensor.OfType("cot", DataType.Float, cot.Values, y);
        var conv = new Node("Conv", ["x", "w", "b"], ["y"], "conv")
            .Set(NodeAttribute.Of("strides", s.Strides)).Set(NodeAttribute.Of("dilations", s.Dilations)).Set(NodeAttribute.Of("group", s.Group));
        conv.Set(s.AutoPad == "VALID" ? NodeAttribute.Of("auto_pad", "VALID") : NodeAttribute.Of("pads", s.Pads));
        g.Nodes.Add(conv);
        g.Nodes.Add(new Node("Mul", ["y", "cot"], ["yc"], "mul"));
        g.Nodes.Add(new Node("ReduceSum", ["yc"], ["loss"], "rs").Set(NodeAttribute.Of("keepdims", 0L)));
        g.ValueTypes["y"] = TensorType.Of(DataType.Float, y);
        g.ValueTypes["yc"] = TensorType.Of(DataType.Float, y);
        g.ValueTypes["loss"] = new TensorType(DataType.Float, []);
        var grads = OrtFinetune.Training.Compiler.Autodiff.Autodiff.Differentiate(g, 17, "loss", ["x", "w", "b"]);
        foreach (var gr in grads) g.Outputs.Add(new ValueInfo(gr, new TensorType(DataType.Float, null)));
        Dictionary<string, HostTensor> outs;
        using (var r = new OrtRunner(m))
            outs = r.Run(new Dictionary<string, HostTensor> { ["x"] = x.As(DataType.Float), ["w"] = w.As(DataType.Float), ["b"] = GradCheck.Randn(134, s.W[0]).As(DataType.Float) });

        // reference: loop over every (output, kernel tap) pair
        var dx = new double[x.Count]; var dw = new double[w.Count]; var db = new double[s.W[0]];
        int nsp = s.X.Length - 2;
        long cg = s.W[1], mg = s.W[0] / s.Group;
        long[] Strides(long[] shape) { var st = new long[shape.Length]; long acc = 1; for (int i = shape.Length - 1; i >= 0; i--) { st[i] = acc; acc *= shape[i]; } return st; }
        var xst = Strides(s.X); var wst = Strides(s.W); var yst = Strides(y);
        long ySp = y.Skip(2).Aggregate(1L, (a, v) => a * v), kSp = s.W.Skip(2).Aggregate(1L, (a, v) => a * v);
        for (long n = 0; n < s.X[0]; n++)
        for (long mo = 0; mo < s.W[0]; mo++)
        for (long o = 0; o < ySp; o++)
        {
            var oi = new long[nsp]; long rest = o;
            for (int i = nsp - 1; i >= 0; i--) { oi[i] = rest % y[i + 2]; rest /= y[i + 2]; }
            double gy = cot.Values[n * yst[0] + mo * yst[1] + Enumerable.Range(0, nsp).Sum(i => oi[i] * yst[i + 2])];
            db[mo] += gy;
            for (long ci = 0; ci < cg; ci++)
            for (long k = 0; k < kSp; k++)
            {
                var ki = new long[nsp]; long kr = k;
                for (int i = nsp - 1; i >= 0; i--) { ki[i] = kr % s.W[i + 2]; kr /= s.W[i + 2]; }
                long xo = n * xst[0] + ((mo / mg) * cg + ci) * xst[1]; bool inside = true;
                for (int i = 0; i < nsp; i++)
                {
                    long p = oi[i] * s.Strides[i] + ki[i] * s.Dilations[i] - pads[i];
                    if (p < 0 || p >= s.X[i + 2]) { inside = false; break; }
                    xo += p * xst[i + 2];
                }
                if (!inside) continue;
                long wo = mo * wst[0] + ci * wst[1] + Enumerable.Range(0, nsp).Sum(i => ki[i] * wst[i + 2]);
                dx[xo] += gy * w.Values[wo];
                dw[wo] += gy * x.Values[xo];
            }
        }
        void Compare(string name, double[] expect, HostTensor got)
        {
            Assert.Equal(expect.Length, got.Values.Length);
            double scale = expect.Max(Math.Abs);
            for (int i = 0; i < expect.Length; i++)
                Assert.True(Math.Abs(expect[i] - got.Values[i]) <= 1e-4 * scale + 1e-5,
                    $"Conv {s.Name}: d{name}[{i}] = {got.Values[i]:G8}, reference {expect[i]:G8}");
        }
        Compare("x", dx, outs[grads[0]]);
        Compare("w", dw, outs[grads[1]]);
        Compare("b", db, outs[grads[2]]);
        log.WriteLine($"Conv {s.Name}: matches the float64 reference");
    }

    [Fact]
    public void ConvSymbolicSpatialDimsFailClearly()
    {
        var m = new Model();
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("x", new TensorType(DataType.Float, [new Dim("n"), 3, new Dim("h"), new Dim("w")])));
        g.Inputs.Add(new ValueInfo("w", TensorType.Of(DataType.Float, 4, 3, 3, 3)));
        g.Nodes.Add(new Node("Conv", ["x", "w"], ["y"], "conv"));
        g.Nodes.Add(new Node("ReduceSum", ["y"], ["loss"], "rs").Set(NodeAttribute.Of("keepdims", 0L)));
        g.ValueTypes["y"] = new TensorType(DataType.Float, [new Dim("n"), 4, Dim.Unknown, Dim.Unknown]);
        g.ValueTypes["loss"] = new TensorType(DataType.Float, []);
        var e = Assert.Throws<CompileException>(() => OrtFinetune.Training.Compiler.Autodiff.Autodiff.Differentiate(g, 17, "loss", ["w"]));
        log.WriteLine(e.Message);
        Assert.Contains("static spatial", e.Message);
    }

    [Fact]
    public void ConvSymbolicBatchCompiles()
    {
        var m = new Model();
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("x", new TensorType(DataType.Float, [new Dim("n"), 4, 6, 6])));
        g.Inputs.Add(new ValueInfo("w", TensorType.Of(DataType.Float, 6, 2, 3, 3)));
        g.Nodes.Add(new Node("Conv", ["x", "w"], ["y"], "conv").Set(NodeAttribute.Of("group", 2L)).Set(NodeAttribute.Of("pads", new long[] { 1, 1, 1, 1 })));
        g.Nodes.Add(new Node("ReduceSum", ["y"], ["loss"], "rs").Set(NodeAttribute.Of("keepdims", 0L)));
        g.ValueTypes["y"] = new TensorType(DataType.Float, [new Dim("n"), 6, 6, 6]);
        g.ValueTypes["loss"] = new TensorType(DataType.Float, []);
        var grads = OrtFinetune.Training.Compiler.Autodiff.Autodiff.Differentiate(g, 17, "loss", ["x", "w"]);
        g.Outputs.Add(new ValueInfo("loss", new TensorType(DataType.Float, [])));
        foreach (var gr in grads) g.Outputs.Add(new ValueInfo(gr, new TensorType(DataType.Float, null)));
        using var r = new OrtRunner(m);
        var outs = r.Run(new Dictionary<string, HostTensor>
        {
            ["x"] = GradCheck.Randn(5, 3, 4, 6, 6).As(DataType.Float), ["w"] = GradCheck.Randn(6, 6, 2, 3, 3).As(DataType.Float),
        });
        Assert.Equal(new long[] { 3, 4, 6, 6 }, outs[grads[0]].Shape);
        Assert.Equal(new long[] { 6, 2, 3, 3 }, outs[grads[1]].Shape);
    }
}
