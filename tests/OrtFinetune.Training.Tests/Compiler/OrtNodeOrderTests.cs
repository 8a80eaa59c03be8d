using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Scheduling;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Compiler;

/// <summary>
/// What ORT really runs first: checked with ORT's profiler on a compiled training graph, so the
/// assumption about ORT's execution order (depth-first from the leaves, highest index first) is tested
/// against the runtime, not against our own reading of it.
/// </summary>
public class OrtNodeOrderTests(ITestOutputHelper log)
{
    /// <summary>input (N, 8) -> 4 x (Gemm 8->8 + Relu) -> Gemm 8->3.</summary>
    static Model Mlp(int layers)
    {
        var m = new Model();
        m.Opsets[""] = 17;
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("input", new TensorType(DataType.Float, [new Dim("N"), 8])));
        var x = "input";
        for (int i = 0; i <= layers; i++)
        {
            long outDim = i == layers ? 3 : 8;
            g.Initializers[$"fc{i}.weight"] = Tensor.OfType($"fc{i}.weight", DataType.Float, GradCheck.RandnValues(10 + i, outDim * 8, 0.4), outDim, 8);
            g.Initializers[$"fc{i}.bias"] = Tensor.OfType($"fc{i}.bias", DataType.Float, GradCheck.RandnValues(50 + i, outDim, 0.1), outDim);
            var y = i == layers ? "logits" : $"h{i}";
            g.Nodes.Add(new Node("Gemm", [x, $"fc{i}.weight", $"fc{i}.bias"], [y], $"fc{i}").Set(NodeAttribute.Of("transB", 1L)));
            if (i < layers) { g.Nodes.Add(new Node("Relu", [y], [$"r{i}"], $"relu{i}")); x = $"r{i}"; }
        }
        g.Outputs.Add(new ValueInfo("logits", new TensorType(DataType.Float, [new Dim("N"), 3])));
        return m;
    }

    /// <summary>Names of the nodes ORT ran, in order, for one Run of <paramref name="m"/>.</summary>
    static List<string> ExecutionOrder(Model m, TrainingArtifacts art, string dir)
    {
        using var so = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL, IntraOpNumThreads = 1 };
        so.ProfileOutputPathPrefix = Path.Combine(dir, "order");
        so.EnableProfiling = true;
        using var s = new InferenceSession(ModelIO.ToBytes(m), so);
        var feeds = new List<NamedOnnxValue>();
        var values = new List<OrtValue>();
        var names = new List<string>();
        void Feed(string name, OrtValue v) { names.Add(name); values.Add(v); }
        Feed("input", OrtValue.CreateTensorValueFromMemory(GradCheck.RandnValues(3, 16).Select(v => (float)v).ToArray(), [2, 8]));
        Feed("labels", OrtValue.CreateTensorValueFromMemory(new long[] { 0, 2 }, [2]));
        Feed(TrainingArtifacts.LazyResetGrad, OrtValue.CreateTensorValueFromMemory(new[] { true }, []));
        foreach (var p in art.Parameters)
        {
            Feed(p.Name, OrtValue.CreateTensorValueFromMemory(p.ToFloats(), p.Dims));
            Feed(TrainingArtifacts.AccumulationBuffer(p.Name), OrtValue.CreateTensorValueFromMemory(new float[p.ElementCount], p.Dims));
        }
        try
        {
            using var ro = new RunOptions();
            using var outs = s.Run(ro, names, values, s.OutputNames);
        }
        finally { foreach (var v in values) v.Dispose(); }
        var file = s.EndProfiling();
        using var doc = JsonDocument.Parse(File.ReadAllText(file));
        return doc.RootElement.EnumerateArray()
            .Where(e => e.TryGetProperty("cat", out var c) && c.GetString() == "Node" && e.GetProperty("name").GetString()!.EndsWith("_kernel_time", StringComparison.Ordinal))
            .OrderBy(e => e.GetProperty("ts").GetDouble())
            .Select(e => e.GetProperty("name").GetString()![..^"_kernel_time".Length]).ToList();
    }

    [Fact]
    public void WeightGradientsRunInBackwardOrderInterleavedWithTheActivationGradients()
    {
        const int layers = 4;
        var art = TrainingCompiler.Compile(Mlp(layers), new CompileOptions { GradientAccumulation = true });
        var g = art.TrainingModel.Graph;
        // The leaves sit at the end of the list, the one meant to run first last; the list stays topologically valid.
        var copy = art.TrainingModel.Clone();
        copy.Graph.SortTopologically();
        Assert.Equal(g.Nodes.Count, copy.Graph.Nodes.Count);

        var dir = Directory.CreateTempSubdirectory("ortfinetune-order").FullName;
        try
        {
            var order = ExecutionOrder(art.TrainingModel, art, dir);
            int At(string gradOutput)
            {
                var node = g.Nodes.Single(n => n.Outputs.Contains(gradOutput));
                int i = order.IndexOf(node.Name);
                Assert.True(i >= 0, $"{node.Describe()} not in the profile");
                return i;
            }
            var weights = Enumerable.Range(0, layers + 1).Select(i => At(TrainingArtifacts.GradName($"fc{i}.weight"))).ToList();
            log.WriteLine("accumulation of fc0..fc4.weight ran at " + string.Join(", ", weights) + $" of {order.Count}");
            // Backward order: the last layer's weight gradient first, the first layer's last.
            for (int i = 0; i < layers; i++) Assert.True(weights[i + 1] < weights[i], $"fc{i + 1}.weight's gradient ran after fc{i}.weight's");
            // Interleaved: the last layer's weight gradient is accumulated before the activation gradient
            // reaching the first layer is computed (the Relu gradient of relu0).
            int relu0Grad = order.FindIndex(n => n.StartsWith("relu0_grad", StringComparison.Ordinal));
            Assert.True(relu0Grad >= 0);
            Assert.True(weights[layers] < relu0Grad, $"fc{layers}.weight's gradient ran at {weights[layers]}, after relu0's gradient at {relu0Grad}");
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void WithoutTheReorderingOrtRunsTheFirstLayersGradientFirst()
    {
        // The control: the same graph with the leaves back in the intended (topological) order runs the weight
        // gradients in forward order, all after the whole activation-gradient chain.
        const int layers = 4;
        var art = TrainingCompiler.Compile(Mlp(layers), new CompileOptions { GradientAccumulation = true });
        var m = art.TrainingModel.Clone();
        var arranged = m.Graph.Nodes.ToList();
        m.Graph.SortTopologically();
        Assert.Equal(arranged, m.Graph.Nodes);   // a sorted list stays as it is
        OrtNodeOrder.RestoreIntendedOrder(m.Graph);
        var dir = Directory.CreateTempSubdirectory("ortfinetune-order").FullName;
        try
        {
            var order = ExecutionOrder(m, art, dir);
            int At(string p) => order.IndexOf(m.Graph.Nodes.Single(n => n.Outputs.Contains(TrainingArtifacts.GradName(p))).Name);
            int relu0Grad = order.FindIndex(n => n.StartsWith("relu0_grad", StringComparison.Ordinal));
            log.WriteLine($"file order: fc4.weight at {At("fc4.weight")}, fc0.weight at {At("fc0.weight")}, relu0 gradient at {relu0Grad}");
            Assert.True(At($"fc{layers}.weight") > relu0Grad);
            Assert.Equal(m.Graph.Nodes.Count, OrtNodeOrder.ForDepthFirstExecution(m.Graph) > 0 ? m.Graph.Nodes.Count : -1);
            Assert.Equal(arranged, m.Graph.Nodes);   // RestoreIntendedOrder undoes ForDepthFirstExecution exactly
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
