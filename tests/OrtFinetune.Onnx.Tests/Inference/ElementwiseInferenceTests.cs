using OrtFinetune.Onnx;
using static OrtFinetune.Onnx.Tests.Support.OneNode;
using A = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Onnx.Tests.Inference;

public class ElementwiseInferenceTests
{
    [Theory]
    [InlineData("Add", "float[2,3,4]", "float[4]", "float[2,3,4]")]
    [InlineData("Mul", "float[2,1,4]", "float[3,1]", "float[2,3,4]")]
    [InlineData("Sub", "float[]", "float[5,2]", "float[5,2]")]
    [InlineData("Div", "double[1]", "double[3]", "double[3]")]
    [InlineData("Pow", "float[2,3]", "float[]", "float[2,3]")]
    [InlineData("Max", "float[3,1]", "float[1,4]", "float[3,4]")]
    [InlineData("Equal", "int64[3]", "int64[1]", "bool[3]")]
    [InlineData("Less", "float[2,3]", "float[3]", "bool[2,3]")]
    [InlineData("Greater", "float[2,3]", "float[3]", "bool[2,3]")]
    [InlineData("Add", "float[N,1,4]", "float[3,1]", "float[N,3,4]")]
    [InlineData("Add", "float[N,4]", "float[N,4]", "float[N,4]")]
    [InlineData("Add", "float[N,4]", "float[1,4]", "float[N,4]")]
    [InlineData("Add", "float[N,4]", "float[M,4]", "float[?,4]")]
    [InlineData("Add", "float[N,4]", "float[8,4]", "float[8,4]")]
    [InlineData("Add", "float", "float[8,4]", "float[?]")]
    public void Binary(string op, string a, string b, string expected) =>
        Assert.Equal(expected, S(Run(op, [a, b])[0]));

    [Fact]
    public void BroadcastMismatchNamesNodeAndShapes()
    {
        var e = Assert.Throws<OnnxFormatException>(() => Run("Add", ["float[2,3]", "float[4]"]));
        Assert.Contains("Add node 'node'", e.Message);
        Assert.Contains("[2,3]", e.Message);
        Assert.Contains("[4]", e.Message);
    }

    [Fact]
    public void VariadicAndLogical()
    {
        Assert.Equal("float[2,3,4]", S(Run("Sum", ["float[4]", "float[3,1]", "float[2,1,1]"])[0]));
        Assert.Equal("float[3,4]", S(Run("Mean", ["float[4]", "float[3,4]"])[0]));
        Assert.Equal("float[3,4]", S(Run("Min", ["float[4]", "float[3,4]", "float[1]"])[0]));
        Assert.Equal("bool[3,4]", S(Run("And", ["bool[4]", "bool[3,4]"])[0]));
        Assert.Equal("bool[3,4]", S(Run("Or", ["bool[4]", "bool[3,4]"])[0]));
        Assert.Equal("bool[3,4]", S(Run("Not", ["bool[3,4]"])[0]));
        Assert.Equal("float[2,3,4]", S(Run("Where", ["bool[3,1]", "float[2,1,4]", "float[]"])[0]));
    }

    [Theory]
    [InlineData("Neg"), InlineData("Abs"), InlineData("Sqrt"), InlineData("Exp"), InlineData("Log"), InlineData("Reciprocal"),
     InlineData("Erf"), InlineData("Relu"), InlineData("LeakyRelu"), InlineData("Sigmoid"), InlineData("Tanh"), InlineData("Softplus"),
     InlineData("Elu"), InlineData("Identity"), InlineData("Sign"), InlineData("Clip")]
    public void Unary(string op)
    {
        Assert.Equal("float[N,3]", S(Run(op, ["float[N,3]"])[0]));
        Assert.Equal("double[2,3]", S(Run(op, ["double[2,3]"], ort: false)[0]));
    }

    [Fact]
    public void GeluOpset20AndMicrosoftDomain()
    {
        Assert.Equal("float[2,3]", S(Run("Gelu", ["float[2,3]"], opset: 20)[0]));
        Assert.Equal("float[2,3]", S(Run("Gelu", ["float[2,3]"], domain: "com.microsoft")[0]));
        Assert.Equal("float[2,3]", S(Run("FastGelu", ["float[2,3]"], domain: "com.microsoft", ort: false)[0]));
    }

    [Fact]
    public void PredicatesCastDropout()
    {
        Assert.Equal("bool[2,3]", S(Run("IsNaN", ["float[2,3]"])[0]));
        Assert.Equal("bool[2,3]", S(Run("IsInf", ["float[2,3]"])[0]));
        Assert.Equal("int64[N,3]", S(Run("Cast", ["float[N,3]"], attrs: A.Of("to", (long)DataType.Int64))[0]));
        Assert.Equal("double[2,3]", S(Run("CastLike", ["float[2,3]", "double[]"])[0]));
        Assert.Equal(["float[2,3]", "bool[2,3]"],
            S(Run("Dropout", ["float[2,3]", Tensor.Float("r", [0.5f]), Tensor.FromArray("t", DataType.Bool, new byte[] { 1 })], outputs: 2)));
    }

    [Fact]
    public void IntegerValuesPropagate()
    {
        Run("Mul", [Tensor.Int64("a", [2, 3, 4], 3), Tensor.Int64("b", [-1])], out var r);
        Assert.Equal("-2,-3,-4", string.Join(",", r.Values["out0"]));
        Run("Div", [Tensor.Int64("a", [7, -7], 2), Tensor.Int64("b", [2])], out r);
        Assert.Equal("3,-3", string.Join(",", r.Values["out0"]));
        Run("Equal", [Tensor.Int64("a", [2, -1], 2), Tensor.Int64("b", [-1])], out r);
        Assert.Equal("0,1", string.Join(",", r.Values["out0"]));
        Run("Cast", [Tensor.Int64("a", [0, 5], 2)], out r, attrs: A.Of("to", (long)DataType.Bool));
        Assert.Equal("0,1", string.Join(",", r.Values["out0"]));
    }
}
