using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Training.Tests.Optimizers;

/// <summary>
/// The optimizer graph against torch.optim over several steps (fixtures from
/// tools/reference/make_optimizer_fixtures.py): every parameter and moment after every step, with the
/// updated outputs bound to the very buffers they read (in-place, as the trainer runs it). Each case
/// runs per parameter, in the default buckets, and in buckets so small that parameters of one group
/// are split over several (each member a slice of its bucket's flat buffers, as the trainer lays them out).
/// </summary>
public class OptimizerParityTests(ITestOutputHelper log)
{
    public static TheoryData<string> Cases => new() { "sgd_plain", "sgd_momentum", "sgd_nesterov", "sgd_dampening", "adam", "adamw", "adamw_clip" };

    [Theory, MemberData(nameof(Cases))]
    public void MatchesTorchOptim(string name) => Check(name, skipNonFinite: true, bucketBytes: 0);

    [Theory, MemberData(nameof(Cases))]
    public void MatchesTorchOptimWithoutTheFiniteGuard(string name) => Check(name, skipNonFinite: false, bucketBytes: 0);

    [Theory, MemberData(nameof(Cases))]
    public void MatchesTorchOptimInBuckets(string name) => Check(name, skipNonFinite: true, bucketBytes: OptimizerBuilder.DefaultBucketBytes);

    [Theory, MemberData(nameof(Cases))]
    public void MatchesTorchOptimInSmallBuckets(string name) => Check(name, skipNonFinite: false, bucketBytes: 64);

    void Check(string name, bool skipNonFinite, long bucketBytes)
    {
        var dir = RepoPaths.Fixture("optim", name);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "case.json")));
        var root = json.RootElement;
        var hyper = root.GetProperty("hyper");
        double H(string k, double d) => hyper.TryGetProperty(k, out var v) ? v.GetDouble() : d;
        var type = root.GetProperty("optimizer").GetString()!;
        var betas = hyper.TryGetProperty("betas", out var b) ? b.EnumerateArray().Select(x => x.GetDouble()).ToArray() : [0.9, 0.999];
        var options = new OptimizerOptions
        {
            Type = type, Momentum = H("momentum", 0), Dampening = H("dampening", 0),
            Nesterov = hyper.TryGetProperty("nesterov", out var n) && n.GetBoolean(),
            Beta1 = betas[0], Beta2 = betas[1], Eps = H("eps", 1e-8), WeightDecay = H("weight_decay", 0),
            MaxGradNorm = root.GetProperty("max_norm").ValueKind == JsonValueKind.Null ? null : root.GetProperty("max_norm").GetDouble(),
            NoDecay = root.GetProperty("no_decay").EnumerateArray().Select(x => x.GetString()!).ToArray(),
            SkipNonFiniteUpdates = skipNonFinite, BucketBytes = bucketBytes,
        };
        var names = root.GetProperty("parameters").EnumerateArray().Select(x => x.GetString()!).ToList();
        int steps = root.GetProperty("steps").GetInt32();
        var r = ModelIO.Load(Path.Combine(dir, "reference.onnx")).Graph.Initializers;
        var parameters = names.Select(p => r["param/" + p].WithName(p)).ToList();
        var model = OptimizerBuilder.Build(parameters, options);

        using var session = new InferenceSession(ModelIO.ToBytes(model));
        using var binding = session.CreateIoBinding();
        var values = new Dictionary<string, OrtValue>();
        OrtValue Buffer(string key, float[] init, long[] shape) => values[key] = OrtValue.CreateTensorValueFromMemory(init, shape);
        var suffixes = options.StateSuffixes(DataType.Float);
        // Where each parameter's tensors live: (graph input, element offset) of the parameter, its gradient and each state.
        var arrays = new Dictionary<string, float[]>();
        var at = new Dictionary<string, (string Input, int Offset)>();
        var buckets = OptimizerBucket.Read(model);
        Assert.Equal(bucketBytes > 0, buckets.Count > 0);
        if (bucketBytes == 64) Assert.True(buckets.Count > buckets.Select(x => (x.Type, x.Decays)).Distinct().Count(), "small buckets split a group");
        var slots = buckets.Count > 0
            ? buckets.SelectMany(bk => bk.Members.Select(mb => (Param: mb.Param, Input: bk.Name, Offset: (int)mb.Offset, Shape: new[] { bk.Elements })))
            : parameters.Select(p => (Param: p.Name, Input: p.Name, Offset: 0, Shape: p.Dims));
        var shapes = new Dictionary<string, long[]>();
        foreach (var (param, input, offset, shape) in slots)
            foreach (var (mine, graphInput) in suffixes.Select(x => (OptimizerBuilder.StateName(param, x), OptimizerBuilder.StateName(input, x))).Append((param, input)).Append((param + "_grad", input + "_grad")))
            {
                if (!arrays.ContainsKey(graphInput)) { arrays[graphInput] = new float[shape.Aggregate(1L, (a, x) => a * x)]; shapes[graphInput] = shape; }
                at[mine] = (graphInput, offset);
            }
        Assert.Equal(parameters.Count, parameters.Count(p => at.ContainsKey(p.Name)));
        foreach (var p in parameters) p.ToFloats().CopyTo(arrays[at[p.Name].Input].AsSpan(at[p.Name].Offset));
        foreach (var (input, data) in arrays)
        {
            var v = Buffer(input, data, shapes[input]);
            binding.BindInput(input, v);
            if (!input.EndsWith("_grad")) binding.BindOutput(OptimizerBuilder.Updated(input), v);
        }
        ReadOnlySpan<float> Get(string key, long count) => arrays[at[key].Input].AsSpan(at[key].Offset, (int)count);
        var lr = Buffer("lr", [0f], []);
        var step = values["step"] = OrtValue.CreateTensorValueFromMemory(new long[1], []);
        var scale = Buffer("scale", [1f], []);
        var finite = OrtValue.CreateTensorValueFromMemory(new bool[1], []);
        var norm = Buffer("norm", [0f], []);
        binding.BindInput(OptimizerBuilder.LearningRate, lr);
        binding.BindInput(OptimizerBuilder.Step, step);
        binding.BindInput(OptimizerBuilder.GradScale, scale);
        binding.BindOutput(OptimizerBuilder.AllFinite, finite);
        binding.BindOutput(OptimizerBuilder.GradNorm, norm);
        using var ro = new RunOptions();

        double worst = 0;
        for (int t = 1; t <= steps; t++)
        {
            foreach (var p in parameters) r[$"grad/{t}/{p.Name}"].ToFloats().CopyTo(arrays[at[p.Name + "_grad"].Input].AsSpan(at[p.Name + "_grad"].Offset));
            lr.GetTensorMutableDataAsSpan<float>()[0] = r[$"lr/{t}"].ToFloats()[0];
            step.GetTensorMutableDataAsSpan<long>()[0] = t;
            session.RunWithBinding(ro, binding);
            Assert.True(finite.GetTensorDataAsSpan<bool>()[0]);
            if (r.TryGetValue($"total_norm/{t}", out var tn))
                Assert.Equal(tn.ToDoubles()[0], norm.GetTensorDataAsSpan<float>()[0], 1e-5 * tn.ToDoubles()[0]);
            foreach (var p in parameters)
            {
                var e = RelErr(Get(p.Name, p.ElementCount), r[$"param/{t}/{p.Name}"].ToDoubles());
                worst = Math.Max(worst, e);
                Assert.True(e <= 1e-5, $"{name} step {t}: parameter '{p.Name}' relative error {e:E2}");
                foreach (var s in suffixes)
                {
                    var sn = OptimizerBuilder.StateName(p.Name, s);
                    var es = RelErr(Get(sn, p.ElementCount), r[$"state/{t}/{p.Name}/{s}"].ToDoubles());
                    worst = Math.Max(worst, es);
                    Assert.True(es <= 1e-5, $"{name} step {t}: state '{sn}' relative error {es:E2}");
                }
            }
        }
        // Alignment gaps between bucket members stay zero in every buffer.
        var used = new Dictionary<string, bool[]>();
        foreach (var p in parameters)
            foreach (var key in options.StateSuffixes(DataType.Float).Select(x => OptimizerBuilder.StateName(p.Name, x)).Append(p.Name))
            {
                var (input, offset) = at[key];
                var mask = used.TryGetValue(input, out var m0) ? m0 : used[input] = new bool[arrays[input].Length];
                for (long i = 0; i < p.ElementCount; i++) mask[offset + i] = true;
            }
        foreach (var (input, mask) in used)
            for (int i = 0; i < mask.Length; i++) Assert.True(mask[i] || arrays[input][i] == 0f, $"{input}[{i}] is outside every member and changed to {arrays[input][i]}");
        log.WriteLine($"{name}: {steps} steps, {buckets.Count} buckets, worst relative error {worst:E2}");
        foreach (var v in values.Values) v.Dispose();
        finite.Dispose();
    }

    [Fact]
    public void NonFiniteGradientSkipsTheUpdate()
    {
        var p = Tensor.Float("w", [1f, 2f, 3f], 3);
        var model = OptimizerBuilder.Build([p], new OptimizerOptions { Type = "adamw", BucketBytes = 0 });
        using var session = new InferenceSession(ModelIO.ToBytes(model));
        var feeds = new Dictionary<string, OrtValue>
        {
            [OptimizerBuilder.LearningRate] = OrtValue.CreateTensorValueFromMemory(new[] { 0.1f }, []),
            [OptimizerBuilder.Step] = OrtValue.CreateTensorValueFromMemory(new[] { 1L }, []),
            [OptimizerBuilder.GradScale] = OrtValue.CreateTensorValueFromMemory(new[] { 1f }, []),
            ["w"] = OrtValue.CreateTensorValueFromMemory(new[] { 1f, 2f, 3f }, [3]),
            ["w_grad"] = OrtValue.CreateTensorValueFromMemory(new[] { 1f, float.PositiveInfinity, 3f }, [3]),
            ["w.exp_avg"] = OrtValue.CreateTensorValueFromMemory(new[] { 0.5f, 0.5f, 0.5f }, [3]),
            ["w.exp_avg_sq"] = OrtValue.CreateTensorValueFromMemory(new[] { 0.25f, 0.25f, 0.25f }, [3]),
        };
        using var ro = new RunOptions();
        using var res = session.Run(ro, feeds.Keys.ToArray(), feeds.Values.ToArray(), session.OutputNames.ToArray());
        Assert.False(res[0].GetTensorDataAsSpan<bool>()[0]);
        Assert.Equal([1f, 2f, 3f], res[2].GetTensorDataAsSpan<float>().ToArray());
        Assert.Equal([0.5f, 0.5f, 0.5f], res[3].GetTensorDataAsSpan<float>().ToArray());
        foreach (var v in feeds.Values) v.Dispose();
    }
}
