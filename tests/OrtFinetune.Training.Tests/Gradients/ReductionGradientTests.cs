using OrtFinetune.Onnx;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Gradients;

public class ReductionGradientTests(ITestOutputHelper log)
{
    /// <summary>Shape, axes (null = all), keepdims: single and several axes, negative axes, rank 1.</summary>
    public static TheoryData<long[], long[]?, long> Cases => new()
    {
        { [2, 3, 4], null, 1 },
        { [2, 3, 4], null, 0 },
        { [2, 3, 4], [1], 1 },
        { [2, 3, 4], [1], 0 },
        { [2, 3, 4], [0, 2], 1 },
        { [2, 3, 4], [-1, 0], 0 },
        { [5], [0], 0 },
        { [3, 1, 4], [1], 0 },
    };

    /// <summary>Checks the op with axes as an attribute (opset 17) and as an input (opset 18).</summary>
    void Check(string op, long[] shape, long[]? axes, long keepDims, int seed)
    {
        var x = new GradInput("x", GradCheck.Randn(seed, shape));
        var keep = NodeAttribute.Of("keepdims", keepDims);
        var asAttr = GradCheck.Run(new GradCase
        {
            OpType = op, Seed = seed, Opset = 17, Inputs = [x],
            Attributes = axes == null ? [keep] : [keep, NodeAttribute.Of("axes", axes)],
        });
        var asInput = GradCheck.Run(new GradCase
        {
            OpType = op, Seed = seed, Opset = 18, Attributes = [keep],
            Inputs = axes == null ? [x] : [x, new("axes", HostTensor.I64(axes, axes.Length), false)],
        });
        log.WriteLine($"{op} [{string.Join(",", shape)}] axes={(axes == null ? "all" : string.Join(",", axes))} keepdims={keepDims}: {asAttr} / {asInput}");
    }

    [Theory, MemberData(nameof(Cases))]
    public void ReduceMean(long[] shape, long[]? axes, long keepDims) => Check("ReduceMean", shape, axes, keepDims, 61);

    [Theory, MemberData(nameof(Cases))]
    public void ReduceMax(long[] shape, long[]? axes, long keepDims) => Check("ReduceMax", shape, axes, keepDims, 62);

    [Theory, MemberData(nameof(Cases))]
    public void ReduceMin(long[] shape, long[]? axes, long keepDims) => Check("ReduceMin", shape, axes, keepDims, 63);

    [Theory, MemberData(nameof(Cases))]
    public void ReduceSumSquare(long[] shape, long[]? axes, long keepDims) => Check("ReduceSumSquare", shape, axes, keepDims, 64);

    [Theory, MemberData(nameof(Cases))]
    public void ReduceSum(long[] shape, long[]? axes, long keepDims)
    {
        // axes are an input from opset 13
        var x = new GradInput("x", GradCheck.Randn(65, shape));
        GradCheck.Run(new GradCase
        {
            OpType = "ReduceSum", Seed = 65, Attributes = [NodeAttribute.Of("keepdims", keepDims)],
            Inputs = axes == null ? [x] : [x, new("axes", HostTensor.I64(axes, axes.Length), false)],
        });
    }

    [Theory]
    [InlineData("ReduceMax")]
    [InlineData("ReduceMin")]
    public void TiesShareTheGradient(string op)
    {
        // two equal extremes per row: the central difference of either is 1/2, as the rule splits it
        var x = HostTensor.F64([1, 3, 3, -2, -5, 0.5, -5, 0.5], 2, 4);
        var r = GradCheck.Run(new GradCase { OpType = op, Seed = 66, Attributes = [NodeAttribute.Of("axes", new long[] { 1 })], Inputs = [new("x", x)] });
        log.WriteLine($"{op} with ties: {r}");
    }
}
