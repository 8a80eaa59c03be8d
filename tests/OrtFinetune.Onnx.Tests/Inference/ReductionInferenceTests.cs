using OrtFinetune.Onnx;
using static OrtFinetune.Onnx.Tests.Support.OneNode;
using A = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Onnx.Tests.Inference;

public class ReductionInferenceTests
{
    static Tensor Axes(params long[] a) => Tensor.Int64("axes", a, a.Length);

    [Theory]
    [InlineData("ReduceSum"), InlineData("ReduceMean"), InlineData("ReduceMax"), InlineData("ReduceMin"),
     InlineData("ReduceSumSquare"), InlineData("ReduceProd")]
    public void AxesAsInputOpset18(string op)
    {
        Assert.Equal("float[2,1,4]", S(Run(op, ["float[2,3,4]", Axes(1)], opset: 18)[0]));
        Assert.Equal("float[4]", S(Run(op, ["float[2,3,4]", Axes(0, -2)], opset: 18, attrs: A.Of("keepdims", 0L))[0]));
        Assert.Equal("float[1,1,1]", S(Run(op, ["float[2,3,4]"], opset: 18)[0]));
        Assert.Equal("float[2,3,4]", S(Run(op, ["float[2,3,4]"], opset: 18, attrs: A.Of("noop_with_empty_axes", 1L))[0]));
        Assert.Equal("float[N,1]", S(Run(op, ["float[N,3]", Axes(-1)], opset: 18)[0]));
    }

    [Theory]
    [InlineData("ReduceMean"), InlineData("ReduceMax"), InlineData("ReduceMin"), InlineData("ReduceSumSquare"), InlineData("ReduceProd")]
    public void AxesAttributeOpset17(string op)
    {
        Assert.Equal("float[2,4]", S(Run(op, ["float[2,3,4]"], attrs: [A.Of("axes", new long[] { 1 }), A.Of("keepdims", 0L)])[0]));
        Assert.Equal("float[]", S(Run(op, ["float[2,3,4]"], attrs: A.Of("keepdims", 0L))[0]));
    }

    [Fact]
    public void ReduceSumOpset13UsesInput()
    {
        Assert.Equal("float[2,4]", S(Run("ReduceSum", ["float[2,3,4]", Axes(1)], opset: 13, attrs: A.Of("keepdims", 0L))[0]));
        Assert.Equal("float[2,1,4]", S(Run("ReduceSum", ["float[2,3,4]"], opset: 11, attrs: A.Of("axes", new long[] { 1 }))[0]));
        // axes not constant: rank is kept with keepdims, dims unknown
        Assert.Equal("float[?,?,?]", S(Run("ReduceSum", ["float[2,3,4]", "int64[1]"], opset: 13, ort: false)[0]));
    }

    [Fact]
    public void ArgMaxArgMin()
    {
        Assert.Equal("int64[2,1,4]", S(Run("ArgMax", ["float[2,3,4]"], attrs: A.Of("axis", 1L))[0]));
        Assert.Equal("int64[2,3]", S(Run("ArgMin", ["float[2,3,4]"], attrs: [A.Of("axis", -1L), A.Of("keepdims", 0L)])[0]));
    }

    [Fact]
    public void BadAxisThrows()
    {
        var e = Assert.Throws<OnnxFormatException>(() => Run("ReduceSum", ["float[2,3]", Axes(2)], opset: 13));
        Assert.Contains("ReduceSum node 'node'", e.Message);
    }
}
