using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using Attribute = OrtFinetune.Onnx.Attribute;

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
        g.Nodes.Add(new Node("ReduceSum", ["y"], ["loss"], "rs") { }.Set(Attribute.Of("keepdims", 0L)));
        g.ValueTypes["y"] = new TensorType(DataType.Float, [new Dim("batch"), 3, 5]);
        g.ValueTypes["loss"] = new TensorType(DataType.Float, []);
        int before = g.Nodes.Count;
        OrtFinetune.Training.Compiler.Autodiff.Autodiff.Differentiate(g, 17, "loss", ["w"]);
        var ops = g.Nodes.Skip(before).Select(n => n.OpType).ToList();
        log.WriteLine(string.Join(" ", ops));
        Assert.Contains("Gemm", ops);
        Assert.DoesNotContain("MatMul", ops);
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
                Attributes = [Attribute.Of("transA", transA), Attribute.Of("transB", transB), Attribute.Of("alpha", 0.7f), Attribute.Of("beta", 1.3f)],
                Inputs = [new("a", GradCheck.Randn(111, a)), new("b", GradCheck.Randn(112, b)), new("c", GradCheck.Randn(113, cShape))],
            });
            log.WriteLine($"Gemm tA={transA} tB={transB} C={S(cShape)}: {r}");
        }
        var r2 = GradCheck.Run(new GradCase
        {
            OpType = "Gemm", Seed = 114,
            Attributes = [Attribute.Of("transA", transA), Attribute.Of("transB", transB)],
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
        var attrs = new List<Attribute> { Attribute.Of("strides", s.Strides), Attribute.Of("dilations", s.Dilations), Attribute.Of("group", s.Group) };
        if (s.AutoPad == "NOTSET") attrs.Add(Attribute.Of("pads", s.Pads));
        else attrs.Add(Attribute.Of("auto_pad", s.AutoPad));
        var inputs = new List<GradInput> { new("x", GradCheck.Randn(121, s.X)), new("w", GradCheck.Randn(122, s.W)) };
        if (s.Bias) inputs.Add(new("b", GradCheck.Randn(123, s.W[0])));
        var r = GradCheck.Run(new GradCase { OpType = "Conv", Seed = 121, Attributes = attrs.ToArray(), Inputs = inputs.ToArray(), MaxProbes = 400 });
        log.WriteLine($"Conv {s.Name} x={S(s.X)} w={S(s.W)}: {r}");
    }

    [Fact]
    public void ConvSymbolicSpatialDimsFailClearly()
    {
        var m = new Model();
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("x", new TensorType(DataType.Float, [new Dim("n"), 3, new Dim("h"), new Dim("w")])));
        g.Inputs.Add(new ValueInfo("w", TensorType.Of(DataType.Float, 4, 3, 3, 3)));
        g.Nodes.Add(new Node("Conv", ["x", "w"], ["y"], "conv"));
        g.Nodes.Add(new Node("ReduceSum", ["y"], ["loss"], "rs").Set(Attribute.Of("keepdims", 0L)));
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
        g.Nodes.Add(new Node("Conv", ["x", "w"], ["y"], "conv").Set(Attribute.Of("group", 2L)).Set(Attribute.Of("pads", new long[] { 1, 1, 1, 1 })));
        g.Nodes.Add(new Node("ReduceSum", ["y"], ["loss"], "rs").Set(Attribute.Of("keepdims", 0L)));
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
