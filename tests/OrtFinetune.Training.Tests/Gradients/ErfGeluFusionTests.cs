using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Fusion;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;
using AD = OrtFinetune.Training.Compiler.Autodiff.Autodiff;

namespace OrtFinetune.Training.Tests.Gradients;

/// <summary>
/// The erf-GELU composite: which chains are matched, that unfusing restores the model's own nodes, that
/// the backward reads x only (not the chain's intermediates), and that its gradient agrees with the
/// node-by-node rules and with central differences.
/// </summary>
public class ErfGeluFusionTests(ITestOutputHelper log)
{
    static readonly long[] Shape = [3, 5];

    /// <summary>
    /// x -> GELU chain in one of its export forms -> y; loss = Σ y·cot. Forms: "div" x·(1+erf(x/√2))·0.5 (torch.onnx);
    /// "mul" 0.5·((1+erf(x·(1/√2)))·x) with commuted operands; "half-first" (x·0.5)·(1+erf); "half-middle" x·((1+erf)·0.5);
    /// "odd" other constants (x/1.3, 0.25 + erf, ·0.7), matched and differentiated with its own constants.
    /// </summary>
    static Model Chain(string form, bool constantNodes = false)
    {
        var m = new Model();
        m.Opsets[""] = 17;
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("x", TensorType.Of(DataType.Float, Shape)));
        void Const(string name, double v)
        {
            var t = Tensor.OfType(name, DataType.Float, [v]);
            if (constantNodes) g.Nodes.Add(new Node("Constant", [], [name], name + "_node").Set(NodeAttribute.Of("value", t)));
            else g.Initializers[name] = t;
        }
        bool odd = form == "odd";
        Const("c", form == "mul" ? 1 / Math.Sqrt(2) : odd ? 1.3 : Math.Sqrt(2));
        Const("one", odd ? 0.25 : 1);
        Const("half", odd ? 0.7 : 0.5);
        g.Initializers["cot"] = Tensor.OfType("cot", DataType.Float, GradCheck.RandnValues(77, 15), Shape);
        void N(string op, string a, string b, string o) => g.Nodes.Add(new Node(op, [a, b], [o], o + "_node"));
        switch (form)
        {
            case "div" or "odd":
                N("Div", "x", "c", "z"); g.Nodes.Add(new Node("Erf", ["z"], ["e"], "erf")); N("Add", "e", "one", "p"); N("Mul", "x", "p", "q"); N("Mul", "q", "half", "y");
                break;
            case "mul":
                N("Mul", "c", "x", "z"); g.Nodes.Add(new Node("Erf", ["z"], ["e"], "erf")); N("Add", "one", "e", "p"); N("Mul", "p", "x", "q"); N("Mul", "half", "q", "y");
                break;
            case "half-first":
                N("Mul", "x", "half", "q"); N("Div", "x", "c", "z"); g.Nodes.Add(new Node("Erf", ["z"], ["e"], "erf")); N("Add", "e", "one", "p"); N("Mul", "q", "p", "y");
                break;
            case "half-middle":
                N("Div", "x", "c", "z"); g.Nodes.Add(new Node("Erf", ["z"], ["e"], "erf")); N("Add", "e", "one", "p"); N("Mul", "p", "half", "q"); N("Mul", "x", "q", "y");
                break;
            default: throw new ArgumentException(form);
        }
        N("Mul", "y", "cot", "yc");
        g.Nodes.Add(new Node("ReduceSum", ["yc"], ["loss"], "rs").Set(NodeAttribute.Of("keepdims", 0L)));
        g.Outputs.Add(new ValueInfo("loss", new TensorType(DataType.Float, [])));
        g.SortTopologically();
        ShapeInference.Infer(m);
        return m;
    }

    static readonly string[] Intermediates = ["z", "e", "p", "q"];

    /// <summary>dL/dx from a graph differentiated with or without the composite.</summary>
    static double[] Gradient(Model forward, bool fuse, out Model compiled, out int matched)
    {
        var m = forward.Clone();
        var g = m.Graph;
        var fused = fuse ? ErfGeluFusion.Fuse(g) : new ErfGeluFusion.Fused();
        matched = fused.Count;
        var grads = AD.Differentiate(g, 17, "loss", ["x"]);
        ErfGeluFusion.Unfuse(g, fused);
        g.Outputs.Add(new ValueInfo(grads[0], new TensorType(DataType.Float, null)));
        compiled = m;
        using var r = new OrtRunner(m, optimize: false);
        return r.Run(new Dictionary<string, HostTensor> { ["x"] = X }, [grads[0]])[grads[0]].Values;
    }

    static readonly HostTensor X = HostTensor.F32(GradCheck.RandnValues(5, 15, scale: 1.5), Shape);

    [Theory]
    [InlineData("div", false)]
    [InlineData("div", true)]
    [InlineData("mul", false)]
    [InlineData("half-first", false)]
    [InlineData("half-middle", true)]
    [InlineData("odd", false)]
    public void MatchesEachExportFormAndAgreesWithNodeRulesAndFiniteDifferences(string form, bool constantNodes)
    {
        var forward = Chain(form, constantNodes);
        var fused = Gradient(forward, fuse: true, out var compiled, out int matched);
        Assert.Equal(1, matched);
        var reference = Gradient(forward, fuse: false, out _, out _);

        // The forward is the model's own chain again, and nothing after it reads the chain's intermediates.
        var g = compiled.Graph;
        Assert.DoesNotContain(g.Nodes, n => n.Domain == ErfGeluFusion.Domain);
        foreach (var n in forward.Graph.Nodes)
            Assert.Contains(g.Nodes, c => c.Name == n.Name && c.OpType == n.OpType && c.Inputs.SequenceEqual(n.Inputs) && c.Outputs.SequenceEqual(n.Outputs));
        var forwardNames = forward.Graph.Nodes.Select(n => n.Name).ToHashSet();
        var readers = g.Nodes.Where(n => !forwardNames.Contains(n.Name) && n.Inputs.Intersect(Intermediates).Any()).Select(n => n.Describe()).ToList();
        Assert.True(readers.Count == 0, "backward reads chain intermediates: " + string.Join("; ", readers));

        // Central differences of the forward in float32.
        using var run = new OrtRunner(forward, optimize: false);
        double Loss(double[] xv) => run.Run(new Dictionary<string, HostTensor> { ["x"] = HostTensor.F32(xv, Shape) })["loss"].Values[0];
        const double h = 1e-2;
        double maxFd = 0, maxRef = 0;
        for (int i = 0; i < X.Values.Length; i++)
        {
            var up = X.Values.ToArray(); up[i] += h;
            var dn = X.Values.ToArray(); dn[i] -= h;
            double fd = (Loss(up) - Loss(dn)) / (2 * h);
            maxFd = Math.Max(maxFd, Math.Abs(fd - fused[i]));
            maxRef = Math.Max(maxRef, Math.Abs(reference[i] - fused[i]) / (1 + Math.Abs(reference[i])));
            Assert.True(Math.Abs(fd - fused[i]) <= 2e-3 + 2e-3 * Math.Abs(fd), $"{form}: x[{i}] fused {fused[i]} vs central difference {fd}");
            Assert.True(Math.Abs(reference[i] - fused[i]) <= 1e-5 * (1 + Math.Abs(reference[i])), $"{form}: x[{i}] fused {fused[i]} vs node rules {reference[i]}");
        }
        log.WriteLine($"{form} (constants as {(constantNodes ? "Constant nodes" : "initializers")}): max |fused - FD| {maxFd:G3}, max rel |fused - node rules| {maxRef:G3}");
    }

    [Fact]
    public void IntermediatesReadElsewhereOrNonConstantOperandsAreNotMatched()
    {
        // An intermediate that is a graph output.
        var m = Chain("div");
        m.Graph.Outputs.Add(new ValueInfo("p", new TensorType(DataType.Float, null)));
        Assert.Equal(0, ErfGeluFusion.Fuse(m.Clone().Graph).Count);

        // An intermediate with a second consumer.
        m = Chain("div");
        m.Graph.Nodes.Add(new Node("Neg", ["e"], ["e2"], "other"));
        m.Graph.Outputs.Add(new ValueInfo("e2", new TensorType(DataType.Float, null)));
        Assert.Equal(0, ErfGeluFusion.Fuse(m.Graph).Count);

        // A non-constant operand (the "1" is an input).
        m = Chain("div");
        m.Graph.Initializers.Remove("one");
        m.Graph.Inputs.Add(new ValueInfo("one", TensorType.Of(DataType.Float, 1)));
        Assert.Equal(0, ErfGeluFusion.Fuse(m.Graph).Count);

        // A non-scalar constant.
        m = Chain("div");
        m.Graph.Initializers["half"] = Tensor.OfType("half", DataType.Float, Enumerable.Repeat(0.5, 5).ToArray(), 5);
        Assert.Equal(0, ErfGeluFusion.Fuse(m.Graph).Count);

        // Unmatched graphs are left exactly as they were.
        var before = m.Graph.Nodes.ToList();
        ErfGeluFusion.Fuse(m.Graph);
        Assert.Equal(before, m.Graph.Nodes);
    }

    /// <summary>input -> Gemm(w1, b1) -> erf GELU (Constant nodes) -> Gemm(w2, b2) -> logits.</summary>
    static Model Mlp()
    {
        var m = new Model();
        m.Opsets[""] = 17;
        var g = m.Graph;
        g.Initializers["w1"] = Tensor.OfType("w1", DataType.Float, GradCheck.RandnValues(11, 24, 0.5), 6, 4);
        g.Initializers["b1"] = Tensor.OfType("b1", DataType.Float, GradCheck.RandnValues(12, 6, 0.1), 6);
        g.Initializers["w2"] = Tensor.OfType("w2", DataType.Float, GradCheck.RandnValues(13, 18, 0.5), 3, 6);
        g.Initializers["b2"] = Tensor.OfType("b2", DataType.Float, GradCheck.RandnValues(14, 3, 0.1), 3);
        // Constants as Constant nodes, as exporters write them (float initializers would be trainable parameters).
        foreach (var (name, v) in new[] { ("sqrt2", Math.Sqrt(2)), ("one", 1.0), ("half", 0.5) })
            g.Nodes.Add(new Node("Constant", [], [name], name + "_const").Set(NodeAttribute.Of("value", Tensor.OfType(name, DataType.Float, [v]))));
        g.Inputs.Add(new ValueInfo("input", new TensorType(DataType.Float, [new Dim("N"), 4])));
        g.Nodes.Add(new Node("Gemm", ["input", "w1", "b1"], ["u"], "fc1").Set(NodeAttribute.Of("transB", 1L)));
        g.Nodes.Add(new Node("Div", ["u", "sqrt2"], ["z"], "div"));
        g.Nodes.Add(new Node("Erf", ["z"], ["e"], "erf"));
        g.Nodes.Add(new Node("Add", ["e", "one"], ["p"], "add"));
        g.Nodes.Add(new Node("Mul", ["u", "p"], ["q"], "mul"));
        g.Nodes.Add(new Node("Mul", ["q", "half"], ["a"], "mul_1"));
        g.Nodes.Add(new Node("Gemm", ["a", "w2", "b2"], ["logits"], "fc2").Set(NodeAttribute.Of("transB", 1L)));
        g.Outputs.Add(new ValueInfo("logits", new TensorType(DataType.Float, [new Dim("N"), 3])));
        return m;
    }

    /// <summary>The default gradient rules without the composite's: the chain differentiated node by node.</summary>
    static OrtFinetune.Training.Compiler.Autodiff.GradientRegistry NodeRulesOnly()
    {
        var registry = new OrtFinetune.Training.Compiler.Autodiff.GradientRegistry();
        foreach (var rule in OrtFinetune.Training.Compiler.Autodiff.GradientRegistry.CreateDefault().Rules.Where(r => r.Domain != ErfGeluFusion.Domain))
            if (rule.Build != null) registry.Add(rule.OpType, rule.Build, rule.Inputs, rule.Outputs, rule.Domain); else registry.NotDifferentiable(rule.OpType);
        return registry;
    }

    /// <summary>The parameter gradients of <paramref name="art"/>'s training model and of <paramref name="other"/> on one batch of <see cref="Mlp"/>'s input.</summary>
    static (List<string> Names, Dictionary<string, HostTensor> A, Dictionary<string, HostTensor> B) ParameterGradients(TrainingArtifacts art, Model other)
    {
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input"] = HostTensor.F32(GradCheck.RandnValues(21, 20), 5, 4),
            ["labels"] = HostTensor.I64([0, 2, 1, 1, 0], 5),
        };
        foreach (var p in art.Parameters) feeds[p.Name] = HostTensor.FromTensor(p).As(DataType.Float);
        var names = art.Parameters.Select(p => TrainingArtifacts.GradName(p.Name)).ToList();
        using var ra = new OrtRunner(art.TrainingModel);
        using var rb = new OrtRunner(other);
        return (names, ra.Run(feeds, names), rb.Run(feeds, names));
    }

    [Fact]
    public void TrainingCompilerKeepsTheModelsNodesAndTheGradientOfTheUnfusedGraph()
    {
        // Gemm -> GELU -> Gemm -> logits, compiled for training (the whole pipeline: loss, autodiff, accumulation order): the same node multiset as the unfused
        // compile except for the backward, and the same parameter gradients.
        var art = TrainingCompiler.Compile(Mlp());
        var tg = art.TrainingModel.Graph;
        foreach (var n in Mlp().Graph.Nodes) Assert.Contains(tg.Nodes, c => c.Name == n.Name && c.OpType == n.OpType && c.Inputs.SequenceEqual(n.Inputs));
        Assert.All(tg.Nodes, n => Assert.Equal("", n.Domain));
        var chain = new HashSet<string> { "div", "erf", "add", "mul", "mul_1" };
        Assert.DoesNotContain(tg.Nodes, n => !chain.Contains(n.Name) && n.Inputs.Intersect(["z", "e", "p", "q"]).Any());

        // Same gradients as the node-by-node backward (TrainingCompiler with a registry lacking the composite rule).
        var plain = TrainingCompiler.Compile(Mlp(), registry: NodeRulesOnly()).TrainingModel;
        Assert.Contains(plain.Graph.Nodes, n => n.Inputs.Contains("p") && n.Name != "mul");   // the node rules do read it
        var (names, a, b) = ParameterGradients(art, plain);
        foreach (var n in names)
            for (int i = 0; i < a[n].Values.Length; i++)
                Assert.True(Math.Abs(a[n].Values[i] - b[n].Values[i]) <= 1e-6 + 1e-5 * Math.Abs(b[n].Values[i]), $"{n}[{i}]: {a[n].Values[i]} vs {b[n].Values[i]}");
    }

    [Fact]
    public void Under16BitAutocastTheBackwardKeepsThe16BitInputAndMatchesTheNodeRules()
    {
        // Autocast computes a 16-bit GELU in fp32 between a Cast in and a Cast out (Precision.AutocastPass); the composite
        // takes the casts in, so the backward reads the bfloat16 u (not its fp32 copy) and recomputes the derivative in fp32.
        var m = Mlp();
        OrtFinetune.Training.Compiler.Precision.AutocastPass.Run(m, DataType.BFloat16, new OrtFinetune.Abstractions.AutocastLists());
        var widened = m.Graph.Nodes.Single(n => n.OpType == "Cast" && n.Inputs[0] == "u").Output(0);
        var cpu = OrtFinetune.Training.Runtime.KernelProbe.For(OrtFinetune.Training.Runtime.DeviceSpec.Cpu);
        var art = TrainingCompiler.Compile(m.Clone(), new CompileOptions { Kernels = cpu });
        var tg = art.TrainingModel.Graph;
        Assert.Equal(DataType.BFloat16, tg.TypeOf("u")!.ElemType);
        Assert.Equal(new[] { "div", "mul" }, tg.Nodes.Where(n => n.Inputs.Contains(widened)).Select(n => n.Name).Order());
        Assert.DoesNotContain(tg.Nodes, n => n.Name is not ("div" or "erf" or "add" or "mul" or "mul_1") && n.Inputs.Intersect(["z", "e", "p", "q"]).Any());
        Assert.Contains(tg.Nodes, n => n.Inputs.Contains("u") && n.Name.Contains("erf_gelu_grad"));

        var plain = TrainingCompiler.Compile(m.Clone(), new CompileOptions { Kernels = cpu }, NodeRulesOnly()).TrainingModel;
        Assert.Contains(plain.Graph.Nodes, n => n.Inputs.Contains(widened) && n.Name is not ("div" or "mul"));   // the node rules read the fp32 copy
        var (names, a, b) = ParameterGradients(art, plain);
        // Both compute the derivative in fp32 from the same bfloat16 values and round once, at the Cast back to u's type:
        // they differ by fp32 rounding, so by at most one bfloat16 step of the gradient reaching w1 and b1.
        double scale = names.SelectMany(n => b[n].Values).Max(Math.Abs);
        foreach (var n in names)
            for (int i = 0; i < a[n].Values.Length; i++)
                Assert.True(Math.Abs(a[n].Values[i] - b[n].Values[i]) <= 1e-2 * Math.Abs(b[n].Values[i]) + 1e-3 * scale, $"{n}[{i}]: {a[n].Values[i]} vs {b[n].Values[i]}");
    }
}
