using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Precision;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Precision;

public class AutocastPassTests(ITestOutputHelper log)
{
    static DataType TypeOf(Model m, string v) => m.Graph.TypeOf(v)!.ElemType;
    static Node NodeNamed(Model m, string name) => m.Graph.Nodes.Single(n => n.Name == name);
    static DataType ComputeType(Model m, Node n) => TypeOf(m, n.Outputs[0]);

    [Theory]
    [InlineData(DataType.Float16)]
    [InlineData(DataType.BFloat16)]
    public void LowListRunsIn16BitSensitiveOpsInFp32AndMasterWeightsStayFp32(DataType low)
    {
        var m = Mlp();
        var r = AutocastPass.Run(m, low, new AutocastLists());
        ShapeInference.Infer(m);
        log.WriteLine(string.Join("\n", m.Graph.Nodes));
        Assert.Equal(low, ComputeType(m, NodeNamed(m, "fc1")));      // MatMul: low list
        Assert.Equal(low, ComputeType(m, NodeNamed(m, "bias1")));    // Add: promote, activation is 16-bit, bias cast at use
        Assert.Equal(low, ComputeType(m, NodeNamed(m, "relu")));     // Relu: follows its input
        Assert.Equal(low, ComputeType(m, NodeNamed(m, "fc2")));
        Assert.Equal(DataType.Float, ComputeType(m, NodeNamed(m, "softmax"))); // full list
        Assert.Equal(DataType.Float, ComputeType(m, NodeNamed(m, "mix")));     // promote: fp32 and 16-bit activations -> fp32
        // Master weights: initializers untouched, cast at use (one Cast per weight even when used twice).
        foreach (var w in new[] { "w1", "b1", "w2" }) Assert.Equal(DataType.Float, m.Graph.Initializers[w].Type);
        Assert.Single(m.Graph.Nodes, n => n.OpType == "Cast" && n.Inputs[0] == "w1");
        // Interface unchanged.
        Assert.Equal(DataType.Float, m.Graph.Outputs[0].Type.ElemType);
        Assert.Equal(DataType.Float, TypeOf(m, "y"));
        AssertNoRedundantCasts(m);
        Assert.Equal(5, r.LowNodes); // fc1, bias1, relu, fc2, fc1_again
    }

    [Fact]
    public void ListsAreConfigurable()
    {
        var m = Mlp();
        AutocastPass.Run(m, DataType.Float16, new AutocastLists().With(addFull: ["MatMul"]));
        ShapeInference.Infer(m);
        Assert.DoesNotContain(m.Graph.Nodes, n => n.OpType != "Cast" && n.Outputs.Any(o => TypeOf(m, o) == DataType.Float16));
        var m2 = Mlp();
        AutocastPass.Run(m2, DataType.Float16, new AutocastLists().With(addLow: ["Softmax"]));
        ShapeInference.Infer(m2);
        Assert.Equal(DataType.Float16, ComputeType(m2, NodeNamed(m2, "softmax")));
    }

    [Fact]
    public void AnOpWithoutA16BitKernelStaysFp32()
    {
        var m = Mlp();
        var r = AutocastPass.Run(m, DataType.Float16, new AutocastLists(), new ListedKernels([("Relu", DataType.Float16)]));
        ShapeInference.Infer(m);
        Assert.Equal(DataType.Float, ComputeType(m, NodeNamed(m, "fc1")));
        Assert.Equal(DataType.Float, ComputeType(m, NodeNamed(m, "relu"))); // its input is fp32 now: nothing to follow
        Assert.DoesNotContain(m.Graph.Nodes, n => n.OpType == "Cast");
        Assert.True(r.KeptFp32ForMissingKernel >= 2);
    }

    [Fact]
    public void CastCleanupRemovesIdentityAndLosslessRoundTripsButKeepsRounding()
    {
        var m = new Model();
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("x", TensorType.Of(DataType.Float, 2)));
        g.Inputs.Add(new ValueInfo("h", TensorType.Of(DataType.Float16, 2)));
        Node Cast(string i, string o, DataType t) => new Node("Cast", [i], [o], "c_" + o).Set(NodeAttribute.Of("to", (long)t));
        g.Nodes.Add(Cast("x", "x32", DataType.Float));          // identity
        g.Nodes.Add(Cast("h", "h32", DataType.Float));
        g.Nodes.Add(Cast("h32", "h16", DataType.Float16));      // lossless round trip -> h
        g.Nodes.Add(Cast("x", "x16", DataType.Float16));
        g.Nodes.Add(Cast("x16", "xr", DataType.Float));         // rounding on purpose: kept
        g.Nodes.Add(Cast("x", "x16b", DataType.Float16));       // duplicate of x16
        g.Nodes.Add(new Node("Add", ["x32", "xr"], ["a"], "a"));
        g.Nodes.Add(new Node("Add", ["h16", "x16b"], ["b"], "b"));
        g.Outputs.Add(new ValueInfo("a", TensorType.Of(DataType.Float, 2)));
        g.Outputs.Add(new ValueInfo("b", TensorType.Of(DataType.Float16, 2)));
        ShapeInference.Infer(m);
        CastCleanup.Run(g);
        log.WriteLine(string.Join("\n", g.Nodes));
        Assert.Equal(["x", "xr"], g.Nodes.Single(n => n.Name == "a").Inputs);
        Assert.Equal(["h", "x16"], g.Nodes.Single(n => n.Name == "b").Inputs);
        Assert.Equal(2, g.Nodes.Count(n => n.OpType == "Cast"));
    }

    [Fact]
    public void CastCleanupKeepApartMergesOnlyDuplicatesWhoseTwinIsStillRead()
    {
        // h (fp16) is cast to fp32 twice for a (the first cast still read at the second: merged), then once more
        // much later for c, after every reader of the first cast: kept, so one fp32 copy is not held across.
        // "Later" is ORT's execution order (depth-first from the leaves, highest-index input first), not the list:
        // the late cast is listed before n1 and n2, and ORT runs it after them.
        Model Build()
        {
            var m = new Model();
            var g = m.Graph;
            g.Inputs.Add(new ValueInfo("h", TensorType.Of(DataType.Float16, 2)));
            Node Cast(string i, string o) => new Node("Cast", [i], [o], "c_" + o).Set(NodeAttribute.Of("to", (long)DataType.Float));
            g.Nodes.Add(Cast("h", "h32a"));
            g.Nodes.Add(Cast("h", "h32b"));
            g.Nodes.Add(new Node("Add", ["h32a", "h32b"], ["a"], "a"));
            g.Nodes.Add(Cast("h", "h32c"));
            g.Nodes.Add(new Node("Neg", ["a"], ["n1"], "n1"));
            g.Nodes.Add(new Node("Neg", ["n1"], ["n2"], "n2"));
            g.Nodes.Add(new Node("Mul", ["n2", "h32c"], ["c"], "c"));
            g.Outputs.Add(new ValueInfo("c", TensorType.Of(DataType.Float, 2)));
            var order = g.Nodes.ToList();
            ShapeInference.Infer(m);
            g.Nodes.Clear(); g.Nodes.AddRange(order);   // inference sorts: keep the late cast late
            return m;
        }
        var apart = Build();
        CastCleanup.Run(apart.Graph, keepApart: true);
        var aIn = apart.Graph.Nodes.Single(n => n.Name == "a").Inputs;
        Assert.Equal(aIn[0], aIn[1]);
        Assert.Equal(["n2", "h32c"], apart.Graph.Nodes.Single(n => n.Name == "c").Inputs);
        Assert.Equal(2, apart.Graph.Nodes.Count(n => n.OpType == "Cast"));

        var merged = Build();
        CastCleanup.Run(merged.Graph);
        Assert.Equal(["n2", "h32a"], merged.Graph.Nodes.Single(n => n.Name == "c").Inputs);
        Assert.Equal(1, merged.Graph.Nodes.Count(n => n.OpType == "Cast"));
    }

    [Fact]
    public void ConvertPassStoresWeightsIn16BitAndKeepsTheInterfaceFp32()
    {
        var m = TinyModels.ConvNet(1);
        ConvertPass.Run(m, DataType.BFloat16);
        Assert.All(m.Graph.Initializers.Values.Where(t => t.Type.IsFloat()), t => Assert.Equal(DataType.BFloat16, t.Type));
        Assert.Equal(DataType.Float, m.Graph.Inputs[0].Type.ElemType);
        Assert.Equal(DataType.Float, TypeOf(m, "logits"));
        Assert.Equal(DataType.BFloat16, ComputeType(m, NodeNamed(m, "fc2")));
    }

    [Fact]
    public void KernelFallbackLeavesNo16BitNodeWithoutACpuKernel()
    {
        var probe = KernelProbe.For(DeviceSpec.Cpu);
        foreach (var t in new[] { DataType.Float16, DataType.BFloat16 })
        {
            var m = TinyModels.ConvNet(1);
            ConvertPass.Run(m, t);
            var r = KernelFallback.Apply(m, probe);
            log.WriteLine($"{t.OnnxName()}: wrapped {string.Join(", ", r.WrappedByOp.Select(kv => $"{kv.Key} x{kv.Value}"))}");
            AssertAllKernelsExist(m, probe);
            using var runner = new OrtRunner(m);
            var (x, _) = TinyModels.Bars(4, 1);
            var y = runner.Run(new Dictionary<string, HostTensor> { ["input"] = HostTensor.F32(x.Select(v => (double)v).ToArray(), 4, 1, 8, 8) });
            Assert.Equal(16, y["logits"].Values.Length);
        }
    }

    /// <summary>Every node with a 16-bit input or output has that kernel on the provider.</summary>
    internal static void AssertAllKernelsExist(Model m, IKernelAvailability kernels)
    {
        ShapeInference.Infer(m);
        foreach (var n in m.Graph.Nodes)
        {
            if (n.OpType == "Cast" || n.Domain != "") continue;
            var q = KernelQuery.Of(n, m.Graph, m.OpsetOf(""));
            Assert.True(q.ProbedType == null || kernels.Has(q), $"{n} computes in {q.ProbedType} without a kernel on {kernels.Provider}");
        }
    }

    internal static void AssertNoRedundantCasts(Model m)
    {
        var producers = m.Graph.Producers();
        foreach (var n in m.Graph.Nodes.Where(n => n.OpType == "Cast"))
        {
            var to = (DataType)n.GetInt("to", 0);
            Assert.NotEqual(to, TypeOf(m, n.Inputs[0]));
            if (producers.TryGetValue(n.Inputs[0], out var p) && p.OpType == "Cast")
                Assert.False(TypeOf(m, p.Inputs[0]) == to && CastCleanup.Lossless(to, TypeOf(m, n.Inputs[0])), $"redundant pair {p} -> {n}");
        }
    }

    [Theory]
    [InlineData("autocast", DataType.Float16)]
    [InlineData("convert", DataType.Float16)]
    [InlineData("convert", DataType.BFloat16)]
    public void A16BitGeluIsComputedInFloatWithTheModelsConstantsAndRoundedOnce(string pass, DataType low)
    {
        // x -> erf GELU as torch.onnx writes it -> y, with a 16-bit x: autocast on a 16-bit input, or the true policies'
        // conversion of an fp32 model (whose interface stays fp32). PyTorch's 16-bit GELU computes in float and rounds once;
        // node by node in 16 bits (√2 rounded to 1.4140625, every intermediate rounded), 1 + erf(x/√2) cancels for x below
        // about -2 and loses most of its digits.
        var io = pass == "autocast" ? low : DataType.Float;
        var m = new Model();
        m.Opsets[""] = 17;
        var g = m.Graph;
        foreach (var (name, v) in new[] { ("sqrt2", Math.Sqrt(2)), ("one", 1.0), ("half", 0.5) })
            g.Nodes.Add(new Node("Constant", [], [name], name + "_const").Set(NodeAttribute.Of("value", Tensor.OfType(name, DataType.Float, [v]))));
        g.Inputs.Add(new ValueInfo("x", TensorType.Of(io, 256)));
        g.Nodes.Add(new Node("Div", ["x", "sqrt2"], ["z"], "div"));
        g.Nodes.Add(new Node("Erf", ["z"], ["e"], "erf"));
        g.Nodes.Add(new Node("Add", ["e", "one"], ["p"], "add"));
        g.Nodes.Add(new Node("Mul", ["x", "p"], ["q"], "mul"));
        g.Nodes.Add(new Node("Mul", ["q", "half"], ["y"], "mul_1"));
        g.Outputs.Add(new ValueInfo("y", TensorType.Of(io, 256)));

        if (pass == "autocast") AutocastPass.Run(m, low, new AutocastLists()); else ConvertPass.Run(m, low);
        ShapeInference.Infer(m);
        log.WriteLine(string.Join("\n", g.Nodes));
        foreach (var n in new[] { "div", "erf", "add", "mul", "mul_1" }) Assert.Equal(DataType.Float, ComputeType(m, NodeNamed(m, n)));
        Assert.Equal(Math.Sqrt(2), NodeNamed(m, "sqrt2_const").Attr("value")!.T!.ToDoubles()[0], 6);  // not rounded to 16 bits
        Assert.Equal(low, TypeOf(m, pass == "autocast" ? "y" : g.Nodes.Single(n => n.Outputs.Contains("y")).Inputs[0]));

        double Round(double v) => low == DataType.Float16 ? (double)(Half)v : Tensor.OfType("r", DataType.BFloat16, [v]).ToDoubles()[0];
        double Ulp(double v) => Math.Pow(2, Math.Floor(Math.Log2(Math.Max(Math.Abs(v), 1e-4))) - (low == DataType.Float16 ? 10 : 7));
        var x = Enumerable.Range(0, 256).Select(i => Round(-4.0 + 8.0 * i / 255)).ToArray();
        double[] y;
        using (var r = new OrtRunner(m, optimize: false)) y = r.Run(new Dictionary<string, HostTensor> { ["x"] = new(io, [256], x) })["y"].Values;
        static double Gelu(double v) => 0.5 * v * (1 + Erf(v / Math.Sqrt(2)));
        int nodeByNodeOff = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double once = Round(Gelu(x[i]));
            Assert.True(Math.Abs(y[i] - once) <= Ulp(once), $"x = {x[i]}: {y[i]} vs {once} (rounded once)");
            double q = Round(x[i] * Round(Round(Erf(Round(x[i] / Round(Math.Sqrt(2))))) + 1));
            if (Math.Abs(Round(q * 0.5) - once) > 2 * Ulp(once)) nodeByNodeOff++;
        }
        Assert.True(nodeByNodeOff > 0, "the inputs do not tell rounding once from rounding node by node");
    }

    /// <summary>erf(v) to about 1e-15 (Abramowitz-Stegun 7.1.26 is too coarse here): the series for |v| &lt; 3, the continued fraction above.</summary>
    static double Erf(double v)
    {
        double a = Math.Abs(v);
        double r;
        if (a < 3)
        {
            double term = a, sum = a;
            for (int k = 1; k < 200 && Math.Abs(term) > 1e-17; k++) { term *= -a * a / k; sum += term / (2 * k + 1); }
            r = 2 / Math.Sqrt(Math.PI) * sum;
        }
        else
        {
            double f = 0;
            for (int k = 60; k >= 1; k--) f = k / 2.0 / (a + f);
            r = 1 - Math.Exp(-a * a) / Math.Sqrt(Math.PI) / (a + f);
        }
        return Math.Sign(v) * r;
    }

    /// <summary>x -> MatMul(w1) + b1 -> Relu -> MatMul(w2) -> Softmax; mix = Add(softmax, MatMul(x, w1)); y = mix.</summary>
    static Model Mlp()
    {
        var m = new Model();
        var g = m.Graph;
        var rng = new Random(3);
        float[] R(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        g.Initializers["w1"] = Tensor.Float("w1", R(12), 4, 3);
        g.Initializers["b1"] = Tensor.Float("b1", R(3), 3);
        g.Initializers["w2"] = Tensor.Float("w2", R(9), 3, 3);
        g.Inputs.Add(new ValueInfo("x", new TensorType(DataType.Float, [new Dim("N"), 4])));
        g.Nodes.Add(new Node("MatMul", ["x", "w1"], ["h"], "fc1"));
        g.Nodes.Add(new Node("Add", ["h", "b1"], ["hb"], "bias1"));
        g.Nodes.Add(new Node("Relu", ["hb"], ["r"], "relu"));
        g.Nodes.Add(new Node("MatMul", ["r", "w2"], ["z"], "fc2"));
        g.Nodes.Add(new Node("Softmax", ["z"], ["s"], "softmax").Set(NodeAttribute.Of("axis", -1L)));
        g.Nodes.Add(new Node("MatMul", ["x", "w1"], ["h2"], "fc1_again"));
        g.Nodes.Add(new Node("Add", ["s", "h2"], ["y"], "mix"));
        g.Outputs.Add(new ValueInfo("y", new TensorType(DataType.Float, [new Dim("N"), 3])));
        return m;
    }
}
