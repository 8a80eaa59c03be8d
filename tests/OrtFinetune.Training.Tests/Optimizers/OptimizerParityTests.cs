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
/// updated outputs bound to the very buffers they read (in-place, as the trainer runs it).
/// </summary>
public class OptimizerParityTests(ITestOutputHelper log)
{
    public static TheoryData<string> Cases => new() { "sgd_plain", "sgd_momentum", "sgd_nesterov", "sgd_dampening", "adam", "adamw", "adamw_clip" };

    static double RelErr(ReadOnlySpan<float> ours, double[] torch)
    {
        double num = 0, den = 0;
        for (int i = 0; i < torch.Length; i++) { num += (ours[i] - torch[i]) * (ours[i] - torch[i]); den += torch[i] * torch[i]; }
        return Math.Sqrt(num) / Math.Max(Math.Sqrt(den), 1e-30);
    }

    [Theory, MemberData(nameof(Cases))]
    public void MatchesTorchOptim(string name) => Check(name, skipNonFinite: true);

    [Theory, MemberData(nameof(Cases))]
    public void MatchesTorchOptimWithoutTheFiniteGuard(string name) => Check(name, skipNonFinite: false);

    void Check(string name, bool skipNonFinite)
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
            SkipNonFiniteUpdates = skipNonFinite,
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
        var suffixes = options.StateSuffixes;
        foreach (var p in parameters)
        {
            var pv = Buffer(p.Name, p.ToFloats(), p.Dims);
            binding.BindInput(p.Name, pv);
            binding.BindOutput(OptimizerBuilder.Updated(p.Name), pv);
            binding.BindInput(p.Name + "_grad", Buffer(p.Name + "_grad", new float[p.ElementCount], p.Dims));
            foreach (var s in suffixes)
            {
                var sn = OptimizerBuilder.StateName(p.Name, s);
                var sv = Buffer(sn, new float[p.ElementCount], p.Dims);
                binding.BindInput(sn, sv);
                binding.BindOutput(OptimizerBuilder.Updated(sn), sv);
            }
        }
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
            foreach (var p in parameters) r[$"grad/{t}/{p.Name}"].ToFloats().CopyTo(values[p.Name + "_grad"].GetTensorMutableDataAsSpan<float>());
            lr.GetTensorMutableDataAsSpan<float>()[0] = r[$"lr/{t}"].ToFloats()[0];
            step.GetTensorMutableDataAsSpan<long>()[0] = t;
            session.RunWithBinding(ro, binding);
            Assert.True(finite.GetTensorDataAsSpan<bool>()[0]);
            if (r.TryGetValue($"total_norm/{t}", out var tn))
                Assert.Equal(tn.ToDoubles()[0], norm.GetTensorDataAsSpan<float>()[0], 1e-5 * tn.ToDoubles()[0]);
            foreach (var p in parameters)
            {
                var e = RelErr(values[p.Name].GetTensorDataAsSpan<float>(), r[$"param/{t}/{p.Name}"].ToDoubles());
                worst = Math.Max(worst, e);
                Assert.True(e <= 1e-5, $"{name} step {t}: parameter '{p.Name}' relative error {e:E2}");
                foreach (var s in suffixes)
                {
                    var sn = OptimizerBuilder.StateName(p.Name, s);
                    var es = RelErr(values[sn].GetTensorDataAsSpan<float>(), r[$"state/{t}/{p.Name}/{s}"].ToDoubles());
                    worst = Math.Max(worst, es);
                    Assert.True(es <= 1e-5, $"{name} step {t}: state '{sn}' relative error {es:E2}");
                }
            }
        }
        log.WriteLine($"{name}: {steps} steps, worst relative error {worst:E2}");
        foreach (var v in values.Values) v.Dispose();
        finite.Dispose();
    }

    [Fact]
    public void NonFiniteGradientSkipsTheUpdate()
    {
        var p = Tensor.Float("w", [1f, 2f, 3f], 3);
        var model = OptimizerBuilder.Build([p], new OptimizerOptions { Type = "adamw" });
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
