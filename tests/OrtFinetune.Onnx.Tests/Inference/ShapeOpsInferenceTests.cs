using OrtFinetune.Onnx;
using static OrtFinetune.Onnx.Tests.Support.OneNode;
using A = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Onnx.Tests.Inference;

public class ShapeOpsInferenceTests
{
    static Tensor I(params long[] v) => Tensor.Int64("c", v, v.Length);
    static Tensor I0(long v) => Tensor.Int64("c", [v]);

    [Theory]
    [InlineData(new long[] { 0, -1 }, "float[2,12]")]
    [InlineData(new long[] { -1 }, "float[24]")]
    [InlineData(new long[] { 4, 0, 2 }, "float[4,3,2]")]
    [InlineData(new long[] { 2, 3, 2, -1 }, "float[2,3,2,2]")]
    public void Reshape(long[] target, string expected) =>
        Assert.Equal(expected, S(Run("Reshape", ["float[2,3,4]", I(target)])[0]));

    [Fact]
    public void ReshapeSymbolicAndErrors()
    {
        Assert.Equal("float[N,12]", S(Run("Reshape", ["float[N,3,4]", I(0, -1)])[0]));
        Assert.Equal("float[3*N,4]", S(Run("Reshape", ["float[N,3,4]", I(-1, 4)])[0]));
        Assert.Equal("float[N,3,4]", S(Run("Reshape", ["float[3*N,4]", I(-1, 3, 4)])[0]));
        Assert.Equal("float[?,?]", S(Run("Reshape", ["float[N,3,4]", "int64[2]"])[0]));
        Assert.Equal("float[0,4]", S(Run("Reshape", ["float[0,2,2]", I(0, 4)], attrs: A.Of("allowzero", 1L), ort: false)[0]));
        var e = Assert.Throws<OnnxFormatException>(() => Run("Reshape", ["float[2,3,4]", I(5, -1)]));
        Assert.Contains("Reshape node 'node'", e.Message);
        Assert.Throws<OnnxFormatException>(() => Run("Reshape", ["float[2,3,4]", I(5, 5)]));
    }

    [Fact]
    public void ShapeSizeFlattenTranspose()
    {
        Assert.Equal("int64[3]", S(Run("Shape", ["float[N,3,4]"], out var r)[0]));
        Assert.Equal("N,3,4", string.Join(",", r.Values["out0"]));
        Assert.Equal("int64[2]", S(Run("Shape", ["float[2,3,4]"], out r, opset: 15, attrs: A.Of("start", -2L))[0]));
        Assert.Equal("3,4", string.Join(",", r.Values["out0"]));
        Assert.Equal("int64[1]", S(Run("Shape", ["float[2,3,4]"], out r, opset: 15, attrs: [A.Of("start", 1L), A.Of("end", -1L)])[0]));
        Assert.Equal("int64[]", S(Run("Size", ["float[N,3,4]"], out r)[0]));
        Assert.Equal("12*N", r.Values["out0"][0].ToString());
        Assert.Equal("float[6,4]", S(Run("Flatten", ["float[2,3,4]"], attrs: A.Of("axis", 2L))[0]));
        Assert.Equal("float[1,24]", S(Run("Flatten", ["float[2,3,4]"], attrs: A.Of("axis", 0L))[0]));
        Assert.Equal("float[N,12]", S(Run("Flatten", ["float[N,3,4]"])[0]));
        Assert.Equal("float[4,2,3]", S(Run("Transpose", ["float[2,3,4]"], attrs: A.Of("perm", new long[] { 2, 0, 1 }))[0]));
        Assert.Equal("float[4,3,2]", S(Run("Transpose", ["float[2,3,4]"])[0]));
    }

    [Fact]
    public void SqueezeUnsqueeze()
    {
        Assert.Equal("float[3,4]", S(Run("Squeeze", ["float[1,3,1,4]"])[0]));
        Assert.Equal("float[3,1,4]", S(Run("Squeeze", ["float[1,3,1,4]", I(0)])[0]));
        Assert.Equal("float[1,3,4]", S(Run("Squeeze", ["float[1,3,1,4]"], opset: 11, attrs: A.Of("axes", new long[] { -2 }))[0]));
        Assert.Equal("float[1,2,3,1]", S(Run("Unsqueeze", ["float[2,3]", I(0, -1)])[0]));
        Assert.Equal("float[2,1,3]", S(Run("Unsqueeze", ["float[2,3]"], opset: 11, attrs: A.Of("axes", new long[] { 1 }))[0]));
        Assert.Throws<OnnxFormatException>(() => Run("Squeeze", ["float[2,3]", I(0)]));
    }

    [Fact]
    public void ExpandConcatTile()
    {
        Assert.Equal("float[2,3,4]", S(Run("Expand", ["float[3,1]", I(2, 1, 4)])[0]));
        Assert.Equal("float[3,4]", S(Run("Expand", ["float[3,4]", I(1)])[0]));
        Assert.Equal("float[2,7,4]", S(Run("Concat", ["float[2,3,4]", "float[2,4,4]"], attrs: A.Of("axis", 1L))[0]));
        Assert.Equal("float[N,5,4]", S(Run("Concat", ["float[N,1,4]", "float[N,4,4]"], attrs: A.Of("axis", -2L))[0]));
        Assert.Throws<OnnxFormatException>(() => Run("Concat", ["float[2,3]", "float[3,3]"], attrs: A.Of("axis", 1L)));
        Assert.Equal("float[4,9]", S(Run("Tile", ["float[2,3]", I(2, 3)])[0]));
    }

    [Fact]
    public void Split()
    {
        Assert.Equal(["float[2,2]", "float[2,4]"], S(Run("Split", ["float[2,6]", I(2, 4)], outputs: 2, attrs: A.Of("axis", 1L))));
        Assert.Equal(["float[2,3]", "float[2,3]"], S(Run("Split", ["float[2,6]"], outputs: 2, attrs: A.Of("axis", 1L))));
        Assert.Equal(["float[3,2]", "float[3,2]", "float[1,2]"], S(Run("Split", ["float[7,2]"], outputs: 3, opset: 18, attrs: A.Of("num_outputs", 3L))));
        Assert.Equal(["float[1,2]", "float[3,2]"], S(Run("Split", ["float[4,2]"], outputs: 2, opset: 11, attrs: A.Of("split", new long[] { 1, 3 }))));
        Assert.Throws<OnnxFormatException>(() => Run("Split", ["float[2,6]", I(2, 3)], outputs: 2, attrs: A.Of("axis", 1L)));
    }

    [Theory]
    [InlineData(new long[] { 1 }, new long[] { 3 }, new long[] { 1 }, null, "float[2,2,5]")]
    [InlineData(new long[] { 0, -3 }, new long[] { long.MaxValue, -1 }, new long[] { 0, 2 }, null, "float[2,4,2]")]
    [InlineData(new long[] { -1 }, new long[] { long.MinValue }, new long[] { 1 }, new long[] { -1 }, "float[2,4,5]")]
    [InlineData(new long[] { 4 }, new long[] { 0 }, new long[] { 2 }, new long[] { -2 }, "float[2,4,2]")]
    [InlineData(new long[] { 0 }, new long[] { 5 }, new long[] { 2 }, new long[] { 2 }, "float[2,4,3]")]
    [InlineData(new long[] { 10 }, new long[] { 20 }, new long[] { 1 }, null, "float[2,0,5]")]
    public void Slice(long[] starts, long[] ends, long[] axes, long[]? steps, string expected) =>
        Assert.Equal(expected, S(Run("Slice", ["float[2,4,5]", I(starts), I(ends), I(axes), steps == null ? null : I(steps)])[0]));

    [Fact]
    public void SliceSymbolicAndValues()
    {
        Assert.Equal("float[N,3]", S(Run("Slice", ["float[N,4]", I(1), I(long.MaxValue), I(1)])[0]));
        Assert.Equal("float[(N-1),4]", S(Run("Slice", ["float[N,4]", I(1), I(long.MaxValue), I(0)])[0]));
        Assert.Equal("float[(N-2),4]", S(Run("Slice", ["float[N,4]", I(0), I(-2), I(0)])[0]));
        Assert.Equal("float[?,4]", S(Run("Slice", ["float[N,4]", I(0), I(2), I(0)])[0]));
        Run("Slice", [I(5, 6, 7, 8), I(-3), I(long.MaxValue)], out var r);
        Assert.Equal("6,7,8", string.Join(",", r.Values["out0"]));
        Run("Slice", [I(5, 6, 7, 8), I(-1), I(long.MinValue), I(0), I(-2)], out r);
        Assert.Equal("8,6", string.Join(",", r.Values["out0"]));
    }

    [Fact]
    public void GatherScatter()
    {
        Assert.Equal("float[2,3,5]", S(Run("Gather", ["float[2,4,5]", I(0, 1, 3)], attrs: A.Of("axis", 1L))[0]));
        Assert.Equal("float[2,5]", S(Run("Gather", ["float[2,4,5]", I0(-1)], attrs: A.Of("axis", 1L))[0]));
        Assert.Equal("float[2,2,4,5]", S(Run("Gather", ["float[2,4,5]", Tensor.Int64("i", [0, 1, 1, 0], 2, 2)])[0]));
        Assert.Throws<OnnxFormatException>(() => Run("Gather", ["float[2,4,5]", I0(4)], attrs: A.Of("axis", 1L)));
        Assert.Equal("float[2,2]", S(Run("GatherElements", ["float[2,4]", Tensor.Int64("i", [0, 1, 2, 3], 2, 2)], attrs: A.Of("axis", 1L))[0]));
        Assert.Equal("float[2,4]", S(Run("ScatterElements", ["float[2,4]", Tensor.Int64("i", [0, 1], 2, 1), "float[2,1]"], attrs: A.Of("axis", 1L))[0]));
        Assert.Equal("float[4,3]", S(Run("ScatterND", ["float[4,3]", Tensor.Int64("i", [0, 2], 2, 1), "float[2,3]"], opset: 16, attrs: A.Of("reduction", "add"))[0]));
    }

    [Fact]
    public void Pad()
    {
        Assert.Equal("float[3,7]", S(Run("Pad", ["float[2,4]", I(0, 1, 1, 2)])[0]));
        Assert.Equal("float[2,7]", S(Run("Pad", ["float[2,4]", I(1, 2), null, I(1)], opset: 18)[0]));
        Assert.Equal("float[N,6]", S(Run("Pad", ["float[N,4]", I(0, 1, 0, 1)])[0]));
    }
}
