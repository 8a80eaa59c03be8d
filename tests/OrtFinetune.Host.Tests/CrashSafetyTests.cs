using System.Diagnostics;
using OrtFinetune.Training.Runtime;
using Xunit.Abstractions;

namespace OrtFinetune.Host.Tests;

/// <summary>A process killed while writing checkpoints always leaves the last complete one loadable.</summary>
public class CrashSafetyTests(ITestOutputHelper log) : IDisposable
{
    readonly string _tmp = Directory.CreateTempSubdirectory("ortfinetune-crash-").FullName;
    public void Dispose() => Directory.Delete(_tmp, true);

    [Fact]
    public void KilledWhileWritingLeavesTheLastCheckpointIntact()
    {
        var exe = Path.Combine(AppContext.BaseDirectory, "ortfinetune.dll");
        var path = Path.Combine(_tmp, "run.ckpt");
        var rng = new Random(12345);
        int kills = 0, loaded = 0;
        long lastStep = 0, maxStep = 0;
        for (int seed = 0; seed < 10; seed++)
        {
            var psi = new ProcessStartInfo("dotnet", [exe, "debug-checkpoint-writer", "--output", path, "--megabytes", "4"])
            { RedirectStandardOutput = true, UseShellExecute = false };
            using var p = Process.Start(psi)!;
            // Wait until it has written at least once in this run, then kill at a random point.
            var first = p.StandardOutput.ReadLine();
            Assert.NotNull(first);
            Thread.Sleep(rng.Next(10, 400));
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            kills++;
            var ck = CheckpointFile.Load(path);   // must never throw
            long step = long.Parse(ck.Meta["step"]);
            foreach (var t in ck.Tensors)
            {
                var v = t.ToFloats();
                Assert.True(v.All(x => x == step), $"kill {seed}: tensor '{t.Name}' holds values of another step than {step}");
            }
            Assert.True(step >= 1);
            lastStep = step; maxStep = Math.Max(maxStep, step);
            loaded++;
        }
        // The next writer removes what killed writers left behind.
        CheckpointFile.Load(path).Save(path);
        Assert.Empty(Directory.GetFiles(_tmp, "*.tmp-*"));
        log.WriteLine($"{kills} kills at random points, {loaded} checkpoints loaded intact (last step {lastStep}, highest {maxStep}); temporary files left: {Directory.GetFiles(_tmp, "*.tmp-*").Length}");
    }

    [Fact]
    public void KilledWhileExportingLeavesTheLastModelIntact()
    {
        var path = Path.Combine(_tmp, "model.onnx");
        var rng = new Random(4242);
        long maxStep = 0;
        for (int seed = 0; seed < 8; seed++)
        {
            var psi = new ProcessStartInfo("dotnet", [TestPaths.HostDll, "debug-checkpoint-writer", "--kind", "export", "--output", path, "--megabytes", "4"])
            { RedirectStandardOutput = true, UseShellExecute = false };
            using var p = Process.Start(psi)!;
            Assert.NotNull(p.StandardOutput.ReadLine());
            Thread.Sleep(rng.Next(10, 400));
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            var m = OrtFinetune.Onnx.ModelIO.Load(path);   // never half-written under the final name
            long step = long.Parse(m.Metadata["step"]);
            Assert.True(m.Graph.Initializers["w"].ToFloats().All(v => v == step), $"kill {seed}: weights of another step than {step}");
            maxStep = Math.Max(maxStep, step);
        }
        log.WriteLine($"8 kills while exporting, 8 models loaded intact (highest step {maxStep})");
    }
}
