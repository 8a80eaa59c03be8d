using OrtFinetune.Onnx;
using static OrtFinetune.Onnx.Tests.Support.OneNode;
using A = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Onnx.Tests.Inference;

public class MiscInferenceTests
{
    static Tensor I(params long[] v) => Tensor.Int64("c", v, v.Length);
    static Tensor I0(long v) => Tensor.Int64("c", [v]);

    [Fact]
    public void ConstantForms()
    {
        Assert.Equal("float[2,2]", S(Run("Constant", [], attrs: A.Of("value", Tensor.Float("v", [1, 2, 3, 4], 2, 2)))[0]));
        Assert.Equal("int64[]", S(Run("Constant", [], out var r, attrs: A.Of("value_int", 7L))[0]));
        Assert.Equal("7", r.Values["out0"][0].ToString());
        Assert.Equal("int64[3]", S(Run("Constant", [], attrs: A.Of("value_ints", new long[] { 1, 2, 3 }))[0]));
        Assert.Equal("float[]", S(Run("Constant", [], attrs: A.Of("value_float", 1.5f))[0]));
        Assert.Equal("float[2]", S(Run("Constant", [], attrs: A.Of("value_floats", new float[] { 1, 2 }))[0]));
    }

    [Fact]
    public void ConstantOfShapeRangeOneHotNonZero()
    {
        Assert.Equal("float[2,3]", S(Run("ConstantOfShape", [I(2, 3)])[0]));
        Assert.Equal("int64[3]", S(Run("ConstantOfShape", [I(3)], out var r, attrs: A.Of("value", Tensor.Int64("v", [1], 1)))[0]));
        Assert.Equal("1,1,1", string.Join(",", r.Values["out0"]));
        Assert.Equal("float[]", S(Run("ConstantOfShape", [Tensor.Int64("e", [], 0)])[0]));
        Assert.Equal("int64[4]", S(Run("Range", [I0(1), I0(9), I0(2)], out r)[0]));
        Assert.Equal("1,3,5,7", string.Join(",", r.Values["out0"]));
        Assert.Equal("float[3]", S(Run("Range", [Tensor.Float("s", [0]), Tensor.Float("l", [1]), Tensor.Float("d", [0.4f])])[0]));
        Assert.Equal("int64[0]", S(Run("Range", [I0(5), I0(1), I0(1)])[0]));
        Assert.Equal("float[3,10]", S(Run("OneHot", [I(1, 2, 3), I0(10), Tensor.Float("v", [0, 1], 2)])[0]));
        Assert.Equal("float[10,3]", S(Run("OneHot", [I(1, 2, 3), I0(10), Tensor.Float("v", [0, 1], 2)], attrs: A.Of("axis", 0L))[0]));
        Assert.Equal("int64[2,?]", S(Run("NonZero", ["float[3,4]"])[0]));
    }

    [Fact]
    public void Einsum()
    {
        Assert.Equal("float[2,4]", S(Run("Einsum", ["float[2,3]", "float[3,4]"], attrs: A.Of("equation", "ij,jk->ik"))[0]));
        Assert.Equal("float[5,2,4]", S(Run("Einsum", ["float[5,2,3]", "float[5,3,4]"], attrs: A.Of("equation", "bij,bjk->bik"))[0]));
        Assert.Equal("float[2,4]", S(Run("Einsum", ["float[2,3]", "float[3,4]"], attrs: A.Of("equation", "ij,jk"))[0]));
        Assert.Equal("float[7,2,4]", S(Run("Einsum", ["float[7,2,3]", "float[3,4]"], attrs: A.Of("equation", "...ij,jk->...ik"))[0]));
        Assert.Equal("float[3,2]", S(Run("Einsum", ["float[2,3]"], attrs: A.Of("equation", "ij->ji"))[0]));
        Assert.Equal("float[]", S(Run("Einsum", ["float[3]", "float[3]"], attrs: A.Of("equation", "i,i->"))[0]));
    }

    [Fact]
    public void UnknownOpGetsUndefinedWithoutThrowing()
    {
        var t = Run("FancyOp", ["float[2,3]"], out var r, ort: false, domain: "my.domain");
        Assert.Equal(DataType.Undefined, t[0].ElemType);
        Assert.Null(t[0].Shape);
        Assert.Single(r.UnknownOps);
    }

    [Fact]
    public void FileValueInfoIsFallbackButOursWins()
    {
        var m = new Model();
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("x", T("float[N,3]")));
        g.Nodes.Add(new Node("FancyOp", ["x"], ["y"], "fancy", "my.domain"));
        g.Nodes.Add(new Node("Relu", ["y"], ["z"], "relu"));
        g.Nodes.Add(new Node("Relu", ["x"], ["w"], "relu2"));
        g.ValueTypes["y"] = T("float[N,7]");
        g.ValueTypes["w"] = T("float[?,?]");        // less precise than ours
        g.ValueTypes["z"] = T("float[?,7]");
        ShapeInference.Infer(m);
        Assert.Equal("float[N,7]", g.ValueTypes["y"].ToString());
        Assert.Equal("float[N,7]", g.ValueTypes["z"].ToString());
        Assert.Equal("float[N,3]", g.ValueTypes["w"].ToString());
        m.Graph.ValueTypes["y"] = T("float[N,7]");
        ShapeInference.Infer(m, new InferenceOptions { UseExistingTypes = false });
        Assert.Equal(DataType.Undefined, g.ValueTypes["y"].ElemType);
        Assert.Null(g.ValueTypes["z"].Shape);
    }

    [Fact]
    public void NodesAreVisitedInTopologicalOrder()
    {
        var m = new Model();
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("x", T("float[N,3]")));
        g.Nodes.Add(new Node("Relu", ["y"], ["z"], "second"));
        g.Nodes.Add(new Node("Transpose", ["x"], ["y"], "first"));
        ShapeInference.Infer(m);
        Assert.Equal("float[3,N]", g.ValueTypes["z"].ToString());
    }

    [Fact]
    public void RulesArePassedInNotRegisteredGlobally()
    {
        Model Make()
        {
            var m = new Model();
            m.Graph.Inputs.Add(new ValueInfo("x", T("float[2,3]")));
            m.Graph.Nodes.Add(new Node("Twice", ["x"], ["y"], "twice", "my.domain"));
            return m;
        }
        var rules = ShapeInferenceRules.CreateDefault();
        Assert.False(rules.IsSupported("Twice", "my.domain"));
        rules.Register("Twice", c => c.Set(0, c.Elem(0), [.. c.Shape(0)!.Select(d => new Dim(d.Value!.Value * 2))]), "my.domain");
        Assert.True(rules.IsSupported("Twice", "my.domain"));
        Assert.True(rules.IsSupported("Relu"));

        var with = Make();
        Assert.Empty(ShapeInference.Run(with, new InferenceOptions { Rules = rules }).UnknownOps);
        Assert.Equal("float[4,6]", with.Graph.ValueTypes["y"].ToString());
        // the built-in table (no rules passed) and a fresh default table are unchanged
        var without = Make();
        Assert.Single(ShapeInference.Run(without).UnknownOps);
        Assert.False(ShapeInferenceRules.CreateDefault().IsSupported("Twice", "my.domain"));
    }
}
