using OrtFinetune.Onnx;
using static OrtFinetune.Onnx.Tests.Support.OneNode;
using A = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Onnx.Tests.Inference;

public class NnInferenceTests
{
    static Tensor W(params long[] dims) => Tensor.Float("w", new float[dims.Aggregate(1L, (a, b) => a * b)], dims);

    [Theory]
    [InlineData("float[2,3]", "float[3,4]", "float[2,4]")]
    [InlineData("float[3]", "float[3,4]", "float[4]")]
    [InlineData("float[2,3]", "float[3]", "float[2]")]
    [InlineData("float[3]", "float[3]", "float[]")]
    [InlineData("float[5,2,3]", "float[3,4]", "float[5,2,4]")]
    [InlineData("float[5,1,2,3]", "float[6,3,4]", "float[5,6,2,4]")]
    [InlineData("float[3]", "float[7,3,4]", "float[7,4]")]
    [InlineData("float[N,2,3]", "float[3,4]", "float[N,2,4]")]
    public void MatMul(string a, string b, string expected) => Assert.Equal(expected, S(Run("MatMul", [a, b])[0]));

    [Fact]
    public void MatMulKMismatchThrows()
    {
        var e = Assert.Throws<OnnxFormatException>(() => Run("MatMul", ["float[2,3]", "float[4,5]"]));
        Assert.Contains("MatMul node 'node'", e.Message);
        Assert.Contains("[2,3]", e.Message);
        Assert.Contains("[4,5]", e.Message);
        Assert.Throws<OnnxFormatException>(() => Run("MatMul", ["float[2,2,3]", "float[3,3,4]"]));
    }

    [Fact]
    public void Gemm()
    {
        Assert.Equal("float[2,4]", S(Run("Gemm", ["float[2,3]", "float[3,4]", "float[4]"])[0]));
        Assert.Equal("float[2,4]", S(Run("Gemm", ["float[3,2]", "float[4,3]"], attrs: [A.Of("transA", 1L), A.Of("transB", 1L)])[0]));
        Assert.Equal("float[N,10]", S(Run("Gemm", ["float[N,3]", "float[10,3]", "float[10]"], attrs: A.Of("transB", 1L))[0]));
        Assert.Throws<OnnxFormatException>(() => Run("Gemm", ["float[2,3]", "float[4,4]"]));
    }

    [Fact]
    public void Conv()
    {
        Assert.Equal("float[1,8,32,32]", S(Run("Conv", ["float[1,3,32,32]", W(8, 3, 3, 3)], attrs: A.Of("pads", new long[] { 1, 1, 1, 1 }))[0]));
        Assert.Equal("float[2,8,16,16]", S(Run("Conv", ["float[2,3,32,32]", W(8, 3, 3, 3), W(8)],
            attrs: [A.Of("pads", new long[] { 1, 1, 1, 1 }), A.Of("strides", new long[] { 2, 2 })])[0]));
        Assert.Equal("float[1,4,6,5]", S(Run("Conv", ["float[1,4,10,9]", W(4, 1, 3, 3)],
            attrs: [A.Of("dilations", new long[] { 2, 2 }), A.Of("group", 4L)])[0]));
        Assert.Equal("float[1,6,4,4]", S(Run("Conv", ["float[1,2,7,7]", W(6, 2, 3, 3)], attrs: [A.Of("auto_pad", "SAME_UPPER"), A.Of("strides", new long[] { 2, 2 })])[0]));
        Assert.Equal("float[1,6,10]", S(Run("Conv", ["float[1,2,12]", W(6, 2, 3)])[0]));
        Assert.Equal("float[N,8,32,32]", S(Run("Conv", ["float[N,3,32,32]", W(8, 3, 3, 3)], attrs: A.Of("pads", new long[] { 1, 1, 1, 1 }))[0]));
        Assert.Equal("float[1,8,(H-2),32]", S(Run("Conv", ["float[1,3,H,34]", W(8, 3, 3, 3)])[0]));
        Assert.Throws<OnnxFormatException>(() => Run("Conv", ["float[1,4,8,8]", W(8, 3, 3, 3)]));
    }

    [Fact]
    public void ConvTranspose()
    {
        Assert.Equal("float[1,4,9,9]", S(Run("ConvTranspose", ["float[1,3,4,4]", W(3, 4, 3, 3)], attrs: A.Of("strides", new long[] { 2, 2 }))[0]));
        Assert.Equal("float[1,4,8,8]", S(Run("ConvTranspose", ["float[1,3,4,4]", W(3, 4, 3, 3)],
            attrs: [A.Of("strides", new long[] { 2, 2 }), A.Of("pads", new long[] { 1, 1, 1, 1 }), A.Of("output_padding", new long[] { 1, 1 })])[0]));
    }

    [Fact]
    public void Pools()
    {
        Assert.Equal(["float[1,3,16,16]", "int64[1,3,16,16]"], S(Run("MaxPool", ["float[1,3,32,32]"], outputs: 2,
            attrs: [A.Of("kernel_shape", new long[] { 3, 3 }), A.Of("strides", new long[] { 2, 2 }), A.Of("pads", new long[] { 1, 1, 1, 1 })])));
        Assert.Equal("float[1,3,4,4]", S(Run("MaxPool", ["float[1,3,9,9]"], attrs: [A.Of("kernel_shape", new long[] { 2, 2 }), A.Of("strides", new long[] { 2, 2 })])[0]));
        Assert.Equal("float[1,3,5,5]", S(Run("MaxPool", ["float[1,3,9,9]"], attrs: [A.Of("kernel_shape", new long[] { 2, 2 }), A.Of("strides", new long[] { 2, 2 }), A.Of("ceil_mode", 1L)])[0]));
        Assert.Equal("float[1,3,4,4]", S(Run("AveragePool", ["float[1,3,6,6]"], attrs: [A.Of("kernel_shape", new long[] { 3, 3 }), A.Of("strides", new long[] { 2, 2 }), A.Of("pads", new long[] { 1, 1, 1, 1 }), A.Of("ceil_mode", 1L)])[0]));
        Assert.Equal("float[1,3,4,4]", S(Run("AveragePool", ["float[1,3,8,8]"], attrs: [A.Of("kernel_shape", new long[] { 2, 2 }), A.Of("strides", new long[] { 2, 2 })])[0]));
        // ceil_mode: the last window would start in the padding, so it is dropped
        Assert.Equal("float[1,1,2,2]", S(Run("MaxPool", ["float[1,1,3,3]"], attrs: [A.Of("kernel_shape", new long[] { 2, 2 }), A.Of("strides", new long[] { 2, 2 }), A.Of("pads", new long[] { 1, 1, 1, 1 }), A.Of("ceil_mode", 1L)])[0]));
        Assert.Equal("float[N,3,1,1]", S(Run("GlobalAveragePool", ["float[N,3,7,7]"])[0]));
        Assert.Equal("float[2,3,1,1]", S(Run("GlobalMaxPool", ["float[2,3,7,7]"])[0]));
    }

    [Fact]
    public void SoftmaxAndNorms()
    {
        Assert.Equal("float[2,3]", S(Run("Softmax", ["float[2,3]"])[0]));
        Assert.Equal("float[2,3]", S(Run("LogSoftmax", ["float[2,3]"], attrs: A.Of("axis", 0L))[0]));
        Assert.Equal(["float[2,5,8]", "float[2,1,1]", "float[2,1,1]"],
            S(Run("LayerNormalization", ["float[2,5,8]", W(5, 8), W(5, 8)], outputs: 3, attrs: A.Of("axis", 1L))));
        Assert.Equal(["float[N,5,8]", "float[N,5,1]", "float[N,5,1]"],
            S(Run("LayerNormalization", ["float[N,5,8]", W(8), W(8)], outputs: 3)));
        Assert.Equal(["double[2,8]", "double[2,1]", "double[2,1]"],
            S(Run("LayerNormalization", ["double[2,8]", "double[8]"], outputs: 3, ort: false, attrs: A.Of("stash_type", (long)DataType.Double))));
        Assert.Equal(["float[2,4,3,3]", "float[4]", "float[4]"],
            S(Run("BatchNormalization", ["float[2,4,3,3]", W(4), W(4), W(4), Tensor.Float("v", [1, 1, 1, 1], 4)], outputs: 3, opset: 15, attrs: A.Of("training_mode", 1L))));
        Assert.Equal("float[2,4,3,3]", S(Run("BatchNormalization", ["float[2,4,3,3]", W(4), W(4), W(4), Tensor.Float("v", [1, 1, 1, 1], 4)])[0]));
        Assert.Throws<OnnxFormatException>(() => Run("BatchNormalization", ["float[2,4,3,3]", W(5), W(5), W(5), W(5)]));
    }

    [Fact]
    public void Losses()
    {
        var labels = Tensor.Int64("l", [0, 2, 1, 1], 4);
        Assert.Equal(["float[]", "float[4,3]"], S(Run("SoftmaxCrossEntropyLoss", ["float[4,3]", labels], outputs: 2)));
        Assert.Equal("float[4]", S(Run("SoftmaxCrossEntropyLoss", ["float[4,3]", labels], attrs: A.Of("reduction", "none"))[0]));
        Assert.Equal("float[]", S(Run("SoftmaxCrossEntropyLoss", ["float[4,3]", labels], attrs: [A.Of("reduction", "sum"), A.Of("ignore_index", 1L)])[0]));
        Assert.Equal("float[2,5]", S(Run("NegativeLogLikelihoodLoss", ["float[2,3,5]", Tensor.Int64("l", new long[10], 2, 5)], attrs: A.Of("reduction", "none"))[0]));
        Assert.Equal("float[]", S(Run("NegativeLogLikelihoodLoss", ["float[2,3,5]", Tensor.Int64("l", new long[10], 2, 5), W(3)])[0]));
        Assert.Throws<OnnxFormatException>(() => Run("SoftmaxCrossEntropyLoss", ["float[4,3]", Tensor.Int64("l", [0, 1, 2], 3)]));
    }
}
