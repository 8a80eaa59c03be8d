using OrtFinetune.Onnx;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Gradients;

public class NormalizationGradientTests(ITestOutputHelper log)
{
    public static TheoryData<long[], long?> SoftmaxCases => new()
    {
        { [5], null },
        { [5], 0 },
        { [3, 4], null },
        { [3, 4], 0 },
        { [2, 3, 4], null },
        { [2, 3, 4], 1 },
        { [2, 3, 4], 0 },
        { [2, 3, 4], -2 },
        { [2, 1, 3, 2], 2 },
    };

    void Softmax(string op, long[] shape, long? axis, long opset, int seed)
    {
        var r = GradCheck.Run(new GradCase
        {
            OpType = op, Seed = seed, Opset = opset,
            Attributes = axis is { } a ? [NodeAttribute.Of("axis", a)] : [],
            Inputs = [new("x", GradCheck.Randn(seed, shape))],
        });
        log.WriteLine($"{op} opset {opset} [{string.Join(",", shape)}] axis={axis?.ToString() ?? "default"}: {r}");
    }

    [Theory, MemberData(nameof(SoftmaxCases))]
    public void Softmax13(long[] shape, long? axis) => Softmax("Softmax", shape, axis, 13, 101);

    [Theory, MemberData(nameof(SoftmaxCases))]
    public void LogSoftmax13(long[] shape, long? axis) => Softmax("LogSoftmax", shape, axis, 13, 102);

    public static TheoryData<long[], long?, bool, int> LayerNormCases => new()
    {
        { [3, 4], null, true, 1 },
        { [3, 4], null, false, 1 },
        { [2, 3, 4], null, true, 1 },
        { [2, 3, 4], -1, false, 3 },
        { [2, 3, 4], 1, true, 1 },
        { [2, 3, 4], 1, false, 3 },
        { [2, 3, 4], -2, true, 3 },
        { [4, 2, 2, 3], 2, true, 1 },
        { [6], 0, true, 1 },
    };

    [Theory, MemberData(nameof(LayerNormCases))]
    public void LayerNormalization(long[] shape, long? axis, bool bias, int outputs)
    {
        int rank = shape.Length;
        int a = (int)(axis is { } v ? (v < 0 ? v + rank : v) : rank - 1);
        var normShape = shape[a..];
        var attrs = new List<NodeAttribute> { NodeAttribute.Of("epsilon", 1e-3f) };
        if (axis is { } ax) attrs.Add(NodeAttribute.Of("axis", ax));
        if (outputs == 3) attrs.Add(NodeAttribute.Of("stash_type", 1L));
        var inputs = new List<GradInput> { new("x", GradCheck.Randn(111, shape)), new("scale", GradCheck.Randn(112, normShape)) };
        if (bias) inputs.Add(new("b", GradCheck.Randn(113, normShape)));
        var r = GradCheck.Run(new GradCase
        {
            OpType = "LayerNormalization", Seed = 111, Attributes = attrs.ToArray(), Inputs = inputs.ToArray(), Outputs = outputs,
        });
        log.WriteLine($"LayerNormalization [{string.Join(",", shape)}] axis={a} bias={bias} outputs={outputs}: {r}");
    }

    [Fact]
    public void LayerNormalizationBroadcastScaleConstant()
    {
        // scale broadcast over the normalized axes (shape [1, 4] for normalized dims [3, 4]) and a constant bias
        var r = GradCheck.Run(new GradCase
        {
            OpType = "LayerNormalization", Seed = 121, Attributes = [NodeAttribute.Of("axis", 1L)],
            Inputs = [new("x", GradCheck.Randn(121, 2, 3, 4)), new("scale", GradCheck.Randn(122, 1, 4)),
                      new("b", GradCheck.Randn(123, 3, 4), Differentiable: false)],
        });
        log.WriteLine(r.ToString());
    }

    static GradInput[] BatchNormInputs(int seed, long[] shape, bool diffScale = true)
    {
        long ch = shape[1];
        return
        [
            new("x", GradCheck.Randn(seed, shape)),
            new("scale", GradCheck.Randn(seed + 1, ch), diffScale),
            new("b", GradCheck.Randn(seed + 2, ch)),
            new("mean", GradCheck.Randn(seed + 3, ch), false),
            new("var", GradCheck.Uniform(seed + 4, 0.5, 2.0, ch), false),
        ];
    }

    public static TheoryData<long[]> BatchNormShapes => new()
    {
        { [4, 3] },
        { [5, 2] },
        { [2, 3, 4, 5] },
        { [3, 2, 4, 4] },
        { [2, 3, 5] },
    };

    [Theory, MemberData(nameof(BatchNormShapes))]
    public void BatchNormalizationTraining(long[] shape)
    {
        // training mode requires all three outputs (ONNX shape inference rejects fewer)
        var r = GradCheck.Run(new GradCase
        {
            OpType = "BatchNormalization", Seed = 131, Opset = 15, Outputs = 3,
            Attributes = [NodeAttribute.Of("training_mode", 1L), NodeAttribute.Of("epsilon", 1e-3f), NodeAttribute.Of("momentum", 0.8f)],
            Inputs = BatchNormInputs(131, shape),
        });
        log.WriteLine($"BatchNormalization training [{string.Join(",", shape)}]: {r}");
    }

    [Theory, MemberData(nameof(BatchNormShapes))]
    public void BatchNormalizationInference(long[] shape)
    {
        foreach (var attrs in new NodeAttribute[][] { [], [NodeAttribute.Of("training_mode", 0L), NodeAttribute.Of("epsilon", 1e-2f)] })
        {
            var r = GradCheck.Run(new GradCase
            {
                OpType = "BatchNormalization", Seed = 141, Opset = 15, Attributes = attrs, Inputs = BatchNormInputs(141, shape),
            });
            log.WriteLine($"BatchNormalization inference [{string.Join(",", shape)}] {attrs.Length} attrs: {r}");
        }
    }

    [Fact]
    public void BatchNormalizationConstantScale()
    {
        var r = GradCheck.Run(new GradCase
        {
            OpType = "BatchNormalization", Seed = 151, Opset = 15, Outputs = 3, Attributes = [NodeAttribute.Of("training_mode", 1L)],
            Inputs = BatchNormInputs(151, [3, 2, 3], diffScale: false),
        });
        log.WriteLine(r.ToString());
    }

    /// <summary>Opset 13 form: no training_mode attribute; the optional statistics outputs select training mode.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(5)]
    public void BatchNormalizationOpset13(int outputs)
    {
        var r = GradCheck.Run(new GradCase
        {
            OpType = "BatchNormalization", Seed = 161, Opset = 13, Outputs = outputs,
            Inputs = BatchNormInputs(161, [3, 2, 2, 3]),
        });
        log.WriteLine($"BatchNormalization opset 13, {outputs} outputs: {r}");
    }
}
