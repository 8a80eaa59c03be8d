using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Host.Commands;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;
using Xunit.Abstractions;

namespace OrtFinetune.Host.Tests;

/// <summary>
/// The artifacts contract (docs/artifacts.md) from another language: samples/node-trainer trains compiled artifacts
/// with onnxruntime-node from artifacts.json alone, and its losses must equal the C# Trainer's on the same data.
/// Needs Node.js and npm (Debian: nodejs npm); the npm package is installed at test time (npm ci).
/// </summary>
[Collection("console")]
public class NodeTrainerTests(ITestOutputHelper output) : IDisposable
{
    const int Steps = 20, Accumulation = 2;
    const double Lr = 0.01, Tolerance = 1e-5;
    readonly string _tmp = Directory.CreateTempSubdirectory("ortfinetune-node-").FullName;
    public void Dispose() => Directory.Delete(_tmp, true);

    static string SampleDir => Path.Combine(TestPaths.Root, "samples", "node-trainer");

    [Theory]
    [InlineData("buckets")]
    [InlineData("per-parameter")]
    public void NodeSampleTrainsLikeTheCSharpTrainer(string layout)
    {
        var model = Path.Combine(TestPaths.Root, "tests", "fixtures", "autodiff", "mlp", "model.onnx");
        var dir = Path.Combine(_tmp, layout);
        var optim = new OptimizerOptions { MaxGradNorm = 1.0, BucketBytes = layout == "buckets" ? OptimizerBuilder.DefaultBucketBytes : 0 };
        int code;
        var (o, e) = (Console.Out, Console.Error);
        Console.SetOut(TextWriter.Null);
        try { code = CompileCommand.Run(model, dir, new CompileOptions { GradientAccumulation = true }, optim); }
        finally { Console.SetOut(o); Console.SetError(e); }
        Assert.Equal(0, code);
        using (var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "artifacts.json"))))
        {
            Assert.Equal(layout, manifest.RootElement.GetProperty("optimizer_layout").GetString());
            Assert.Equal(layout == "buckets" ? 2 : 0, manifest.RootElement.GetProperty("optimizer_buckets").GetArrayLength());
        }

        EnsureNodeModules();
        var resultFile = Path.Combine(_tmp, layout + ".json");
        var (rc, stdout, stderr) = Exec("node", SampleDir, TimeSpan.FromMinutes(2), "train.js", "--artifacts", dir, "--steps", $"{Steps}", "--accumulation", $"{Accumulation}",
            "--lr", $"{Lr}", "--schedule", "cosine", "--warmup", "3", "--seed", "7", "--threads", "1", "--quiet", "--out", resultFile);
        Assert.True(rc == 0, $"node train.js failed ({rc}):\n{stdout}\n{stderr}");

        using var doc = JsonDocument.Parse(File.ReadAllText(resultFile));
        var r = doc.RootElement;
        var data = r.GetProperty("data");
        var featureShape = data.GetProperty("feature_shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
        long features = featureShape.Aggregate(1L, (a, b) => a * b);
        float[] trainX = Floats(data.GetProperty("train_x")), evalX = Floats(data.GetProperty("eval_x"));
        long[] trainY = Longs(data.GetProperty("train_y")), evalY = Longs(data.GetProperty("eval_y"));
        int batch = r.GetProperty("batch").GetInt32();
        var batches = r.GetProperty("batches").EnumerateArray().Select(b => b.EnumerateArray().Select(i => i.GetInt32()).ToArray()).ToList();
        var nodeSteps = r.GetProperty("steps").EnumerateArray().ToList();
        Assert.Equal(Steps, nodeSteps.Count);
        Assert.Equal(Steps * Accumulation, batches.Count);

        // The same loop with the C# trainer: same artifacts, same batches, same schedule.
        using var trainer = Trainer.Load(dir, new TrainerOptions { IntraOpThreads = 1 });
        var schedule = Schedules.Create("cosine", Lr, Steps, 3);
        var diffs = new List<string>();
        double worst = 0;
        void Check(string what, double csharp, double node)
        {
            double d = Math.Abs(csharp - node);
            worst = Math.Max(worst, d);
            if (!(d <= Tolerance)) diffs.Add($"{what}: C# {csharp:R}, node {node:R} (diff {d:E2})");
        }
        int next = 0;
        for (int step = 0; step < Steps; step++)
        {
            trainer.LazyResetGrad();
            var nodeLosses = nodeSteps[step].GetProperty("losses").EnumerateArray().Select(x => x.GetDouble()).ToArray();
            for (int k = 0; k < Accumulation; k++)
            {
                var (x, y) = Gather(trainX, trainY, batches[next++], features);
                using var xv = OrtValue.CreateTensorValueFromMemory(x, [batch, .. featureShape]);
                using var yv = OrtValue.CreateTensorValueFromMemory(y, [batch]);
                Check($"step {step + 1} micro-batch {k + 1} loss", trainer.TrainStep([xv], yv).Loss, nodeLosses[k]);
            }
            float lr = (float)schedule.At(trainer.Step);
            Check($"step {step + 1} learning rate", lr, nodeSteps[step].GetProperty("lr").GetDouble());
            trainer.SetLearningRate(lr);
            var u = trainer.OptimizerStep();
            Assert.True(u.AllFinite);
            Check($"step {step + 1} grad_norm", u.GradNorm, nodeSteps[step].GetProperty("grad_norm").GetDouble());
        }
        var nodeEval = r.GetProperty("eval").EnumerateArray().Last().GetProperty("batch_losses").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        for (int i = 0; i < nodeEval.Length; i++)
        {
            var (x, y) = Gather(evalX, evalY, Enumerable.Range(i * batch, batch).ToArray(), features);
            using var xv = OrtValue.CreateTensorValueFromMemory(x, [batch, .. featureShape]);
            using var yv = OrtValue.CreateTensorValueFromMemory(y, [batch]);
            Check($"eval batch {i + 1} loss", trainer.EvalStep([xv], yv).Loss, nodeEval[i]);
        }
        output.WriteLine($"{layout}: {Steps * Accumulation} training losses, {Steps} learning rates and gradient norms, {nodeEval.Length} eval losses; largest difference C# vs node {worst:E2}");
        Assert.True(diffs.Count == 0, $"{diffs.Count} values differ by more than {Tolerance} (worst {worst:E2}):\n{string.Join("\n", diffs.Take(20))}");
        // It trained: the last losses are well below the first (cross-entropy of 10 classes starts near ln 10).
        Assert.True(nodeSteps[^1].GetProperty("losses")[0].GetDouble() < 0.75 * nodeSteps[0].GetProperty("losses")[0].GetDouble());
    }

    static float[] Floats(JsonElement a) => a.EnumerateArray().Select(x => (float)x.GetDouble()).ToArray();
    static long[] Longs(JsonElement a) => a.EnumerateArray().Select(x => x.GetInt64()).ToArray();

    static (float[] X, long[] Y) Gather(float[] xs, long[] ys, int[] idx, long features)
    {
        var x = new float[idx.Length * features];
        var y = new long[idx.Length];
        for (int i = 0; i < idx.Length; i++)
        {
            Array.Copy(xs, idx[i] * features, x, i * features, features);
            y[i] = ys[idx[i]];
        }
        return (x, y);
    }

    static readonly object InstallLock = new();

    /// <summary>npm ci in the sample, unless node_modules already holds the locked onnxruntime-node.</summary>
    static void EnsureNodeModules()
    {
        foreach (var tool in new[] { "node", "npm" })
            if (FindOnPath(tool) == null)
                Assert.Fail($"'{tool}' is not on PATH: this test runs samples/node-trainer with Node.js. Install Debian's packages: apt-get install -y nodejs npm");
        lock (InstallLock)
        {
            using var lockFile = JsonDocument.Parse(File.ReadAllText(Path.Combine(SampleDir, "package-lock.json")));
            var wanted = lockFile.RootElement.GetProperty("packages").GetProperty("node_modules/onnxruntime-node").GetProperty("version").GetString();
            var installed = Path.Combine(SampleDir, "node_modules", "onnxruntime-node", "package.json");
            if (File.Exists(installed))
            {
                using var pkg = JsonDocument.Parse(File.ReadAllText(installed));
                if (pkg.RootElement.GetProperty("version").GetString() == wanted) return;
            }
            var (rc, stdout, stderr) = Exec("npm", SampleDir, TimeSpan.FromMinutes(5), "ci", "--no-audit", "--no-fund");
            Assert.True(rc == 0, $"npm ci in samples/node-trainer failed ({rc}); the npm registry must be reachable:\n{stdout}\n{stderr}");
        }
    }

    static string? FindOnPath(string exe) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, exe)).FirstOrDefault(File.Exists);

    static (int Code, string Out, string Err) Exec(string exe, string cwd, TimeSpan timeout, params string[] args)
    {
        var psi = new ProcessStartInfo(exe) { WorkingDirectory = cwd, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{exe} {string.Join(' ', args)} did not finish in {timeout.TotalSeconds:F0} s");
        }
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }
}
