using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Autodiff;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Gradients;

public class GradientRegistryTests
{
    static Graph TwiceThenSum()
    {
        var g = new Graph();
        g.Inputs.Add(new ValueInfo("x", TensorType.Of(DataType.Float, 3)));
        g.Nodes.Add(new Node("Twice", ["x"], ["y"], "twice", "my.domain"));
        g.Nodes.Add(new Node("ReduceSum", ["y"], ["loss"], "rs").Set(NodeAttribute.Of("keepdims", 0L)));
        g.ValueTypes["y"] = TensorType.Of(DataType.Float, 3);
        g.ValueTypes["loss"] = new TensorType(DataType.Float, []);
        return g;
    }

    [Fact]
    public void RulesArePassedInNotRegisteredGlobally()
    {
        var registry = GradientRegistry.CreateDefault();
        registry.Add("Twice", c => c.SetGI(0, c.G * 2), domain: "my.domain");
        var g = TwiceThenSum();
        Autodiff.Differentiate(g, 17, "loss", ["x"], registry);
        Assert.Equal("Mul", g.Nodes.Single(n => n.Outputs.Contains("x_grad")).OpType); // the rule that was passed in

        // the built-in rules (no registry passed) and a fresh default registry do not know the op
        var e = Assert.Throws<CompileException>(() => Autodiff.Differentiate(TwiceThenSum(), 17, "loss", ["x"]));
        Assert.Contains("my.domain.Twice", e.Message);
        Assert.Null(GradientRegistry.CreateDefault().Find("my.domain", "Twice"));
        Assert.NotNull(GradientRegistry.CreateDefault().Find("", "Relu"));
    }
}
