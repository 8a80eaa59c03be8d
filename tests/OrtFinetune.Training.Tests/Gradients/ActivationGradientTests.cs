using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Gradients;

public class ActivationGradientTests(ITestOutputHelper log)
{
    static readonly long[][] Shapes = [[7], [3, 4], [2, 3, 5]];

    /// <summary>Random values in [lo, hi) kept at least <paramref name="gap"/> away from each kink.</summary>
    static HostTensor AwayFrom(int seed, double lo, double hi, long[] shape, double gap, params double[] kinks)
    {
        var t = GradCheck.Uniform(seed, lo, hi, shape);
        var v = t.Values.Select(x =>
        {
            foreach (var k in kinks)
                if (Math.Abs(x - k) < gap) x = x < k ? k - gap - Math.Abs(x - k) : k + gap + Math.Abs(x - k);
            return x;
        }).ToArray();
        return t with { Values = v };
    }

    void Check(string op, double lo, double hi, NodeAttribute[]? attrs = null, double[]? kinks = null, string domain = "", long opset = 17, int seed = 1, DataType preferred = DataType.Double)
    {
        foreach (var shape in Shapes)
        {
            var x = AwayFrom(seed, lo, hi, shape, 0.05, kinks ?? []);
            var r = GradCheck.Run(new GradCase { OpType = op, Domain = domain, Opset = opset, Seed = seed, Attributes = attrs ?? [], Inputs = [new("x", x)], PreferredType = preferred });
            log.WriteLine($"{op} [{string.Join(",", shape)}] {string.Join(" ", (attrs ?? []).Select(a => a.ToString()))}: {r}");
            seed++;
        }
    }

    [Fact] public void Relu() => Check("Relu", -3, 3, kinks: [0]);
    [Fact] public void LeakyRelu() { Check("LeakyRelu", -3, 3, kinks: [0]); Check("LeakyRelu", -3, 3, [NodeAttribute.Of("alpha", 0.2f)], [0]); }
    [Fact] public void Sigmoid() => Check("Sigmoid", -4, 4);
    [Fact] public void Tanh() => Check("Tanh", -3, 3);
    [Fact] public void Softplus() => Check("Softplus", -4, 4);
    [Fact] public void Softsign() => Check("Softsign", -4, 4, kinks: [0]);
    [Fact] public void Elu() { Check("Elu", -3, 3, kinks: [0]); Check("Elu", -3, 3, [NodeAttribute.Of("alpha", 0.7f)], [0]); }
    [Fact] public void Selu() => Check("Selu", -3, 3, kinks: [0]);
    [Fact] public void Celu() => Check("Celu", -3, 3, [NodeAttribute.Of("alpha", 1.5f)], [0], preferred: DataType.Float); // no double Celu kernel
    [Fact] public void ThresholdedRelu() => Check("ThresholdedRelu", -3, 3, [NodeAttribute.Of("alpha", 0.5f)], [0.5]);
    [Fact]
    public void HardSigmoid()
    {
        Check("HardSigmoid", -4, 4, kinks: [-2.5, 2.5]);
        Check("HardSigmoid", -4, 4, [NodeAttribute.Of("alpha", 0.5f), NodeAttribute.Of("beta", 0.25f)], [-0.5, 1.5]);
    }
    [Fact] public void HardSwish() => Check("HardSwish", -5, 5, kinks: [-3, 3], opset: 17);

    [Theory]
    [InlineData("none")]
    [InlineData("tanh")]
    public void GeluOpset20(string approximate) => Check("Gelu", -3, 3, [NodeAttribute.Of("approximate", approximate)], opset: 20);

    [Fact] public void GeluMicrosoft() => Check("Gelu", -3, 3, domain: "com.microsoft");

    [Fact]
    public void FastGeluMicrosoft()
    {
        Check("FastGelu", -3, 3, domain: "com.microsoft");
        var r = GradCheck.Run(new GradCase
        {
            OpType = "FastGelu", Domain = "com.microsoft", Seed = 9,
            Inputs = [new("x", GradCheck.Uniform(9, -2, 2, 2, 3, 4)), new("bias", GradCheck.Uniform(10, -1, 1, 4))],
        });
        log.WriteLine($"FastGelu with bias: {r}");
    }

    [Fact]
    public void PRelu()
    {
        foreach (var (xs, ss) in new (long[], long[])[] { ([3, 4], [4]), ([2, 3, 4], [3, 1]), ([2, 3], [1]), ([2, 3], [2, 3]) })
        {
            var r = GradCheck.Run(new GradCase
            {
                OpType = "PRelu", Seed = 5,
                Inputs = [new("x", AwayFrom(5, -3, 3, xs, 0.05, 0)), new("slope", GradCheck.Uniform(6, 0.05, 0.5, ss))],
            });
            log.WriteLine($"PRelu [{string.Join(",", xs)}] slope [{string.Join(",", ss)}]: {r}");
        }
    }

    [Fact]
    public void Clip()
    {
        var x = AwayFrom(3, -3, 3, [4, 5], 0.05, -1, 1.5);
        var lo = HostTensor.F64([-1.0]) with { Shape = [] };
        var hi = HostTensor.F64([1.5]) with { Shape = [] };
        foreach (var inputs in new GradInput[][]
        {
            [new("x", x), new("min", lo, false), new("max", hi, false)],
            [new("x", x), new("min", lo, false)],
            [new("x", x), GradInput.None, new("max", hi, false)],
            [new("x", x)],
        })
        {
            var r = GradCheck.Run(new GradCase { OpType = "Clip", Seed = 3, Inputs = inputs });
            log.WriteLine($"Clip {string.Join(",", inputs.Select(i => i.Name))}: {r}");
        }
    }

    [Fact]
    public void ClipPassesOnTheBoundary()
    {
        // torch.clamp: the gradient passes at x == min and x == max
        var x = HostTensor.F64([-2, -1, 0, 1.5, 2], 5);
        var (grad, cot, _) = RunGradient("Clip", x, [new ExtraInput("min", HostTensor.F64([-1.0]) with { Shape = [] }), new ExtraInput("max", HostTensor.F64([1.5]) with { Shape = [] })]);
        Assert.Equal(new[] { 0.0, cot[1], cot[2], cot[3], 0.0 }, grad);
    }

    [Fact]
    public void DropoutInferenceIsIdentity()
    {
        var x = GradCheck.Randn(7, 3, 4);
        GradCheck.Run(new GradCase { OpType = "Dropout", Seed = 7, Inputs = [new("x", x)] });
        GradCheck.Run(new GradCase { OpType = "Dropout", Seed = 7, Inputs = [new("x", x), new("ratio", HostTensor.F64([0.3]) with { Shape = [] }, false)] });
        GradCheck.Run(new GradCase
        {
            OpType = "Dropout", Seed = 7, Outputs = 2,
            Inputs = [new("x", x), new("ratio", HostTensor.F64([0.3]) with { Shape = [] }, false), new("tm", new HostTensor(DataType.Bool, [], [0]), false)],
        });
    }

    [Fact]
    public void DropoutTrainingRatioZeroFiniteDifference()
    {
        var r = GradCheck.Run(new GradCase
        {
            OpType = "Dropout", Seed = 8,
            Inputs = [new("x", GradCheck.Randn(8, 2, 3, 4)), new("ratio", HostTensor.F64([0.0]) with { Shape = [] }, false), new("tm", new HostTensor(DataType.Bool, [], [1]), false)],
        });
        log.WriteLine($"Dropout ratio 0 training: {r}");
    }

    [Theory]
    [InlineData(0.3, false, false)]
    [InlineData(0.5, true, false)]
    [InlineData(0.25, false, true)]
    [InlineData(0.6, true, true)]
    public void DropoutTrainingUsesTheMask(double ratio, bool declareMask, bool runtimeRatio)
    {
        var x = GradCheck.Randn(9, 4, 50);
        var extra = new List<ExtraInput>
        {
            new("ratio", HostTensor.F64([ratio]) with { Shape = [] }, Runtime: runtimeRatio),
            new("tm", new HostTensor(DataType.Bool, [], [1])),
        };
        var (grad, cot, mask) = RunGradient("Dropout", x, extra, outputs: declareMask ? 2 : 1, wantMask: true);
        Assert.NotNull(mask);
        int kept = 0;
        for (int i = 0; i < grad.Length; i++)
        {
            double expected = mask![i] != 0 ? cot[i] / (1 - ratio) : 0;
            Assert.True(Math.Abs(grad[i] - expected) <= 1e-5 * (1 + Math.Abs(expected)), $"element {i}: grad {grad[i]} expected {expected}");
            if (mask[i] != 0) kept++;
        }
        Assert.InRange(kept, 1, grad.Length - 1); // the mask really is random
        log.WriteLine($"Dropout ratio {ratio}: kept {kept}/{grad.Length}");
    }

    [Fact]
    public void DropoutRuntimeTrainingMode()
    {
        var x = GradCheck.Randn(10, 4, 50);
        foreach (var tm in new[] { true, false })
        {
            var extra = new List<ExtraInput>
            {
                new("ratio", HostTensor.F64([0.4]) with { Shape = [] }),
                new("tm", new HostTensor(DataType.Bool, [], [tm ? 1 : 0]), Runtime: true),
            };
            var (grad, cot, mask) = RunGradient("Dropout", x, extra, wantMask: true);
            for (int i = 0; i < grad.Length; i++)
            {
                double expected = !tm ? cot[i] : mask![i] != 0 ? cot[i] / 0.6 : 0;
                Assert.True(Math.Abs(grad[i] - expected) <= 1e-5 * (1 + Math.Abs(expected)), $"tm={tm} element {i}: grad {grad[i]} expected {expected}");
            }
        }
    }

    public sealed record ExtraInput(string Name, HostTensor Value, bool Runtime = false);

    /// <summary>
    /// Builds x -> op(x, extras) -> loss = sum(out0 * cotangent), differentiates it, runs it once and
    /// returns the gradient of x, the cotangent and (when asked) the node's mask output from the same run.
    /// </summary>
    static (double[] Grad, double[] Cot, double[]? Mask) RunGradient(string op, HostTensor x, IReadOnlyList<ExtraInput> extras,
        int outputs = 1, bool wantMask = false, long opset = 17)
    {
        var m = new Model();
        m.Opsets[""] = opset;
        var g = m.Graph;
        const DataType ft = DataType.Float;
        g.Inputs.Add(new ValueInfo("x", TensorType.Of(ft, x.Shape)));
        var feeds = new Dictionary<string, HostTensor> { ["x"] = x.As(ft) };
        foreach (var e in extras)
        {
            var t = e.Value.Type.IsFloat() ? ft : e.Value.Type;
            if (e.Runtime) { g.Inputs.Add(new ValueInfo(e.Name, TensorType.Of(t, e.Value.Shape))); feeds[e.Name] = e.Value.As(t); }
            else g.Initializers[e.Name] = Tensor.OfType(e.Name, t, e.Value.Values, e.Value.Shape);
        }
        var node = new Node(op, ["x", .. extras.Select(e => e.Name)], Enumerable.Range(0, outputs).Select(i => $"out{i}"), "node_under_test");
        g.Nodes.Add(node);
        g.ValueTypes["out0"] = TensorType.Of(ft, x.Shape);
        var b = new GraphBuilder(g, opset);
        var cot = GradCheck.RandnValues(77, x.Count);
        var c = b.Const(Tensor.OfType("", ft, cot, x.Shape), "cotangent");
        var prod = b.Mul("out0", c);
        g.ValueTypes[prod] = TensorType.Of(ft, x.Shape);
        g.Nodes.Add(new Node("ReduceSum", [prod], ["loss"], "loss_sum").Set(NodeAttribute.Of("keepdims", 0L)));
        g.ValueTypes["loss"] = new TensorType(ft, []);
        g.Outputs.Add(new ValueInfo("loss", new TensorType(ft, [])));
        var grads = Autodiff.Differentiate(g, opset, "loss", ["x"]);
        g.Outputs.Add(new ValueInfo(grads[0], TensorType.Of(ft, x.Shape)));
        string? maskName = wantMask && node.Outputs.Count > 1 && node.Outputs[1].Length > 0 ? node.Outputs[1] : null;
        if (maskName != null) g.Outputs.Add(new ValueInfo(maskName, TensorType.Of(DataType.Bool, x.Shape)));
        using var r = new OrtRunner(m);
        var res = r.Run(feeds);
        var cotF = cot.Select(v => (double)(float)v).ToArray();
        return (res[grads[0]].Values, cotF, maskName != null ? res[maskName].Values : null);
    }
}
