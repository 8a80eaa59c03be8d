using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Compiler.Scheduling;
using OrtFinetune.Training.Runtime;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Training.Tests.Compiler;

/// <summary>
/// Activation memory of compiled training graphs: attention probabilities are not kept for the backward
/// (Fusion.AttentionRecompute) and the gradients stay what they were; ORT's execution order as the memory model
/// emulates it; the memory model's prediction against a measured run.
/// </summary>
public class MemoryTests(ITestOutputHelper log)
{
    static Model VitSmall() => ModelIO.Load(Path.Combine(RepoPaths.Fixture("autodiff", "vit_small"), "model.onnx"));

    static TrainingArtifacts Compile(bool recompute, bool accumulation = false) =>
        TrainingCompiler.Compile(VitSmall(), new CompileOptions { RecomputeAttention = recompute, GradientAccumulation = accumulation });

    /// <summary>Forward Softmax nodes (before the loss in ORT's order) whose output is still read after the loss: kept for the backward.</summary>
    static List<string> SoftmaxSavedForBackward(Model training)
    {
        var g = training.Graph;
        var order = OrtNodeOrder.ExecutionOrder(g);
        int loss = order.FindIndex(n => n.Outputs.Contains(TrainingArtifacts.LossOutput));
        Assert.True(loss > 0);
        var at = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < order.Count; i++) at[order[i]] = i;
        var consumers = g.Consumers();
        return order.Take(loss).Where(n => n.OpType == "Softmax")
            .Where(n => consumers.GetValueOrDefault(n.Output(0))?.Any(c => at[c] > loss) == true)
            .Select(n => n.Name).ToList();
    }

    [Fact]
    public void AttentionProbabilitiesAreNotSavedForBackward()
    {
        var without = SoftmaxSavedForBackward(Compile(recompute: false).TrainingModel);
        var with = SoftmaxSavedForBackward(Compile(recompute: true).TrainingModel);
        log.WriteLine($"forward Softmax outputs read by the backward: {without.Count} without recompute, {with.Count} with");
        Assert.NotEmpty(without);   // the check can fail: node by node, every layer's probabilities are kept
        Assert.Empty(with);
    }

    [Fact]
    public void RecomputedAttentionGivesTheSameGradients()
    {
        var reference = ModelIO.Load(Path.Combine(RepoPaths.Fixture("autodiff", "vit_small"), "reference.onnx")).Graph.Initializers;
        Dictionary<string, HostTensor> Run(TrainingArtifacts art)
        {
            var feeds = new Dictionary<string, HostTensor>
            {
                ["input"] = HostTensor.FromTensor(reference["input"]),
                ["labels"] = HostTensor.FromTensor(reference["labels"]),
            };
            foreach (var t in art.Parameters.Concat(art.Buffers)) feeds[t.Name] = HostTensor.FromTensor(t);
            using var runner = new OrtRunner(art.TrainingModel);
            return runner.Run(feeds);
        }
        var a = Compile(recompute: false);
        var b = Compile(recompute: true);
        Assert.True(b.TrainingModel.Graph.Nodes.Count > a.TrainingModel.Graph.Nodes.Count);
        var ra = Run(a);
        var rb = Run(b);
        foreach (var p in a.Parameters)
        {
            var x = ra[p.Name + "_grad"].Values;
            var y = rb[p.Name + "_grad"].Values;
            double num = 0, den = 0;
            for (int i = 0; i < x.Length; i++) { num += (x[i] - y[i]) * (x[i] - y[i]); den += x[i] * x[i]; }
            Assert.True(Math.Sqrt(num) <= 1e-6 * Math.Max(Math.Sqrt(den), 1e-30), $"gradient of {p.Name} changed with recomputed attention");
            // and against PyTorch autograd (the parity fixture)
            var t = reference["grad/" + p.Name].ToDoubles();
            num = 0; den = 0;
            for (int i = 0; i < t.Length; i++) { num += (y[i] - t[i]) * (y[i] - t[i]); den += t[i] * t[i]; }
            Assert.True(Math.Sqrt(num) <= 1e-4 * Math.Max(Math.Sqrt(den), 1e-30), $"gradient of {p.Name} differs from PyTorch");
        }
    }

    /// <summary>ORT's real execution order of one Run (profiler), with its graph optimizers off so that node indices are list positions.</summary>
    static List<string> ProfiledOrder(Model m, Dictionary<string, OrtValue> feeds, string dir)
    {
        using var so = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL, IntraOpNumThreads = 1 };
        so.ProfileOutputPathPrefix = Path.Combine(dir, "order");
        so.EnableProfiling = true;
        using var s = new InferenceSession(ModelIO.ToBytes(m), so);
        using (var ro = new RunOptions())
        using (var outs = s.Run(ro, feeds.Keys.ToList(), feeds.Values.ToList(), s.OutputNames)) { }
        var file = s.EndProfiling();
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(file));
        return doc.RootElement.EnumerateArray()
            .Where(e => e.TryGetProperty("cat", out var c) && c.GetString() == "Node" && e.GetProperty("name").GetString()!.EndsWith("_kernel_time", StringComparison.Ordinal))
            .OrderBy(e => e.GetProperty("ts").GetDouble())
            .Select(e => e.GetProperty("name").GetString()![..^"_kernel_time".Length]).ToList();
    }

    [Fact]
    public void EmulatedOrtOrderIsWhatOrtRuns()
    {
        var art = Compile(recompute: true, accumulation: true);
        var g = art.TrainingModel.Graph;
        var reference = ModelIO.Load(Path.Combine(RepoPaths.Fixture("autodiff", "vit_small"), "reference.onnx")).Graph.Initializers;
        var feeds = new Dictionary<string, OrtValue>
        {
            ["input"] = OrtValue.CreateTensorValueFromMemory(reference["input"].ToFloats(), reference["input"].Dims),
            ["labels"] = OrtValue.CreateTensorValueFromMemory(reference["labels"].ToDoubles().Select(v => (long)v).ToArray(), reference["labels"].Dims),
            [TrainingArtifacts.LazyResetGrad] = OrtValue.CreateTensorValueFromMemory(new[] { true }, []),
        };
        foreach (var p in art.Parameters)
        {
            feeds[p.Name] = OrtValue.CreateTensorValueFromMemory(p.ToFloats(), p.Dims);
            feeds[TrainingArtifacts.AccumulationBuffer(p.Name)] = OrtValue.CreateTensorValueFromMemory(new float[p.ElementCount], p.Dims);
        }
        var dir = Directory.CreateTempSubdirectory("ortfinetune-memorder").FullName;
        try
        {
            var named = g.Nodes.Where(n => n.Name.Length > 0).Select(n => n.Name).ToHashSet();
            var ran = ProfiledOrder(art.TrainingModel, feeds, dir).Where(named.Contains).ToList();   // ORT names unnamed nodes itself
            var emulated = OrtNodeOrder.ExecutionOrder(g).Select(n => n.Name).Where(ran.Contains).ToList();
            int same = ran.Zip(emulated).Count(p => p.First == p.Second);
            log.WriteLine($"{same} of {ran.Count} profiled nodes at the emulated position");
            // ORT may run a node that reads no computed value (only inputs and initializers), or one computed from the labels
            // alone, earlier than the depth-first search reaches it (seen: the loss gradient's label chain ran first); such
            // nodes hold no activations. Every other node runs in the emulated order.
            var prods = g.Producers();
            var free = new HashSet<string>();
            foreach (var n in g.Nodes)
                if (n.Inputs.All(i => i.Length == 0 || i == art.Labels || !prods.ContainsKey(i) || free.Contains(i))) free.UnionWith(n.Outputs);
            var byName = g.Nodes.Where(n => n.Name.Length > 0).ToDictionary(n => n.Name);
            bool Free(string name) => byName[name].Outputs.All(free.Contains);
            Assert.Equal(ran.Where(n => !Free(n)), emulated.Where(n => !Free(n)));
            Assert.True(same >= ran.Count * 2 / 3, $"{same} of {ran.Count}");
        }
        finally
        {
            foreach (var v in feeds.Values) v.Dispose();
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void RecomputeLowersThePredictedActivationPeak()
    {
        const long batch = 64;
        var off = Compile(recompute: false, accumulation: true);
        var on = Compile(recompute: true, accumulation: true);
        var a = MemoryModel.Predict(off.TrainingModel, null, batch);
        var b = MemoryModel.Predict(on.TrainingModel, null, batch);
        log.WriteLine($"activation peak: {a.ActivationPeakBytes / 1048576.0:F1} MiB without recompute, {b.ActivationPeakBytes / 1048576.0:F1} MiB with");
        Assert.True(b.ActivationPeakBytes < a.ActivationPeakBytes);
        Assert.Equal(a.PersistentBytes, b.PersistentBytes);
    }

    sealed class Bf16Mixed : OrtFinetune.Abstractions.IPrecisionPolicy
    {
        public string Name => "bf16-mixed";
        public IReadOnlyList<string> Aliases => [];
        public string Description => "test policy: autocast to bfloat16";
        public DataType ComputeType => DataType.BFloat16;
        public DataType StorageType => DataType.Float;
        public OrtFinetune.Abstractions.LossScalerSettings? LossScaling => null;
        public OrtFinetune.Abstractions.UpdateRounding Rounding => OrtFinetune.Abstractions.UpdateRounding.Nearest;
        public void ConvertForward(Model forward, OrtFinetune.Abstractions.IPrecisionPasses passes) => passes.Autocast(forward, DataType.BFloat16, new OrtFinetune.Abstractions.AutocastLists());
        public OrtFinetune.Abstractions.IPrecisionPolicy WithOptions(OrtFinetune.Abstractions.PrecisionOptions options) => this;
    }

    /// <summary>
    /// On the CPU (no 16-bit matrix kernels) a mixed policy's training graph is the fp32 graph unless autocast keeps its
    /// 16-bit ops and the kernel fallback computes them between casts (CompileOptions.LowPrecisionActivations): then the
    /// activations kept for the backward are 16-bit. Activations at the step's peak (memory model), ViT fixture.
    /// </summary>
    [Fact]
    public void LowPrecisionActivationsHalveTheMixedPolicysActivationsOnTheCpu()
    {
        var kernels = KernelProbe.For(DeviceSpec.Cpu);
        long Peak(OrtFinetune.Abstractions.IPrecisionPolicy? p, bool low) => MemoryModel.Predict(TrainingCompiler.Compile(VitSmall(),
            new CompileOptions { GradientAccumulation = true, Precision = p, Kernels = kernels, LowPrecisionActivations = low }).TrainingModel, null, 4).ActivationPeakBytes;
        long full = Peak(null, false), mixed = Peak(new Bf16Mixed(), false), low = Peak(new Bf16Mixed(), true);
        log.WriteLine($"activations at the peak: 32-true {full / 1024.0:F0} KiB, bf16-mixed {mixed / 1024.0:F0} KiB ({(double)mixed / full:F2}x), with 16-bit activations {low / 1024.0:F0} KiB ({(double)low / full:F2}x)");
        Assert.True(low < mixed);
    }
}
