using OrtFinetune.Onnx;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Gradients;

public class PoolingGradientTests(ITestOutputHelper log)
{
    static string S(long[] s) => "[" + string.Join(",", s) + "]";

    /// <summary>Distinct values spaced 0.1 apart in random order: no ties within FD step (2h = 0.02 in float).</summary>
    static HostTensor Distinct(int seed, params long[] shape)
    {
        long n = shape.Aggregate(1L, (a, b) => a * b);
        var rng = new Random(seed);
        var v = Enumerable.Range(0, (int)n).Select(i => (i - n / 2.0) * 0.1).OrderBy(_ => rng.Next()).ToArray();
        return HostTensor.F64(v, shape);
    }

    public sealed record PoolSpec(string Name, long[] X, long[] Kernel, long[] Strides, long[] Pads, long CeilMode = 0, long[]? Dilations = null, long CountIncludePad = 0, string AutoPad = "NOTSET")
    {
        public override string ToString() => Name;
        public NodeAttribute[] Attrs(bool avg)
        {
            var a = new List<NodeAttribute>
            {
                NodeAttribute.Of("kernel_shape", Kernel), NodeAttribute.Of("strides", Strides), NodeAttribute.Of("ceil_mode", CeilMode),
            };
            a.Add(AutoPad == "NOTSET" ? NodeAttribute.Of("pads", Pads) : NodeAttribute.Of("auto_pad", AutoPad));
            if (Dilations != null) a.Add(NodeAttribute.Of("dilations", Dilations));
            if (avg) a.Add(NodeAttribute.Of("count_include_pad", CountIncludePad));
            return a.ToArray();
        }
    }

    public static TheoryData<PoolSpec> MaxPoolCases => new()
    {
        new("k2 s2", [2, 3, 6, 6], [2, 2], [2, 2], [0, 0, 0, 0]),
        new("resnet stem k3 s2 p1", [2, 2, 8, 8], [3, 3], [2, 2], [1, 1, 1, 1]),
        new("resnet stem k3 s2 p1 odd", [1, 3, 7, 7], [3, 3], [2, 2], [1, 1, 1, 1]),
        new("k3 s1 p1 (max overlap)", [1, 2, 5, 5], [3, 3], [1, 1], [1, 1, 1, 1]),
        new("ceil_mode k3 s2", [1, 2, 6, 6], [3, 3], [2, 2], [0, 0, 0, 0], CeilMode: 1),
        new("ceil_mode k2 s2 odd", [1, 2, 5, 7], [2, 2], [2, 2], [0, 0, 0, 0], CeilMode: 1),
        new("asymmetric pads rect", [1, 2, 6, 7], [3, 2], [2, 1], [1, 0, 0, 1]),
        new("dilation 2", [1, 2, 7, 7], [2, 2], [1, 2], [0, 0, 0, 0], Dilations: [2, 2]),
        new("1-D", [2, 3, 9], [3], [2], [1, 1]),
        new("same_upper k3 s2", [1, 2, 6, 6], [3, 3], [2, 2], [], AutoPad: "SAME_UPPER"),
    };

    [Theory, MemberData(nameof(MaxPoolCases))]
    public void MaxPool(PoolSpec s)
    {
        var r = GradCheck.Run(new GradCase
        {
            OpType = "MaxPool", Seed = 201, Attributes = s.Attrs(avg: false),
            Inputs = [new("x", Distinct(201, s.X))], MaxProbes = 400,
        });
        log.WriteLine($"MaxPool {s.Name} x={S(s.X)}: {r}");
    }

    [Fact]
    public void MaxPoolWithDeclaredIndices()
    {
        // the model already exposes Indices; only output 0 feeds the loss
        var s = new PoolSpec("k3 s2 p1", [1, 2, 6, 6], [3, 3], [2, 2], [1, 1, 1, 1]);
        var r = GradCheck.Run(new GradCase
        {
            OpType = "MaxPool", Seed = 202, Attributes = s.Attrs(avg: false), Outputs = 2, LossOutputs = [0],
            Inputs = [new("x", Distinct(202, s.X))], MaxProbes = 400,
        });
        log.WriteLine($"MaxPool with indices: {r}");
    }

    public static TheoryData<PoolSpec> AvgPoolCases => new()
    {
        new("k2 s2", [2, 3, 6, 6], [2, 2], [2, 2], [0, 0, 0, 0]),
        new("k3 s2 p1 exclude pad", [1, 2, 7, 7], [3, 3], [2, 2], [1, 1, 1, 1]),
        new("k3 s2 p1 include pad", [1, 2, 7, 7], [3, 3], [2, 2], [1, 1, 1, 1], CountIncludePad: 1),
        new("k3 s1 p1 exclude pad", [1, 2, 5, 5], [3, 3], [1, 1], [1, 1, 1, 1]),
        new("k3 s1 p1 include pad", [1, 2, 5, 5], [3, 3], [1, 1], [1, 1, 1, 1], CountIncludePad: 1),
        new("asymmetric pads rect", [1, 2, 6, 7], [3, 2], [2, 1], [1, 0, 0, 1], CountIncludePad: 1),
        new("asymmetric pads rect excl", [1, 2, 6, 7], [3, 2], [2, 1], [1, 0, 0, 1]),
        new("ceil_mode k3 s2", [1, 2, 6, 6], [3, 3], [2, 2], [0, 0, 0, 0], CeilMode: 1),
        new("ceil_mode k3 s2 p1 include pad", [1, 2, 6, 6], [3, 3], [2, 2], [1, 1, 1, 1], CeilMode: 1, CountIncludePad: 1),
        new("ceil_mode k2 s2 odd", [1, 2, 5, 7], [2, 2], [2, 2], [0, 0, 0, 0], CeilMode: 1),
        new("1-D", [2, 3, 9], [3], [2], [1, 1]),
        new("1-D include pad", [2, 3, 9], [3], [2], [1, 1], CountIncludePad: 1),
        new("same_upper k3 s2", [1, 2, 6, 6], [3, 3], [2, 2], [], AutoPad: "SAME_UPPER"),
        new("same_lower k2 s1", [1, 2, 5, 5], [2, 2], [1, 1], [], AutoPad: "SAME_LOWER"),
        new("valid k3 s2", [1, 2, 7, 6], [3, 3], [2, 2], [], AutoPad: "VALID"),
    };

    [Theory, MemberData(nameof(AvgPoolCases))]
    public void AveragePool(PoolSpec s)
    {
        var r = GradCheck.Run(new GradCase
        {
            OpType = "AveragePool", Seed = 211, Attributes = s.Attrs(avg: true),
            Inputs = [new("x", GradCheck.Randn(211, s.X))], MaxProbes = 400,
        });
        log.WriteLine($"AveragePool {s.Name} x={S(s.X)}: {r}");
    }

    [Theory]
    [InlineData(new long[] { 2, 3, 4, 5 })]
    [InlineData(new long[] { 2, 3, 7 })]
    [InlineData(new long[] { 1, 2, 1, 1 })]
    public void GlobalAveragePool(long[] shape)
    {
        var r = GradCheck.Run(new GradCase { OpType = "GlobalAveragePool", Seed = 221, Inputs = [new("x", GradCheck.Randn(221, shape))] });
        log.WriteLine($"GlobalAveragePool {S(shape)}: {r}");
    }

    [Theory]
    [InlineData(new long[] { 2, 3, 4, 5 })]
    [InlineData(new long[] { 2, 3, 7 })]
    public void GlobalMaxPool(long[] shape)
    {
        var r = GradCheck.Run(new GradCase { OpType = "GlobalMaxPool", Seed = 231, Inputs = [new("x", Distinct(231, shape))] });
        log.WriteLine($"GlobalMaxPool {S(shape)}: {r}");
    }
}
