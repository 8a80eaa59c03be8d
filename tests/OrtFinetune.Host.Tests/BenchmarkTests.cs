using System.Diagnostics;
using System.Text.Json;
using OrtFinetune.Host.Benchmarking;
using OrtFinetune.Onnx;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Host.Tests;

public class BenchmarkTests(ITestOutputHelper log) : IDisposable
{
    readonly string _tmp = Directory.CreateTempSubdirectory("ortfinetune-bench-").FullName;
    public void Dispose() { try { Directory.Delete(_tmp, true); } catch (IOException) { } }

    static Tensor Weight(string name, params long[] dims) => Tensor.Float(name, new float[dims.Aggregate(1L, (a, b) => a * b)], dims);

    /// <summary>
    /// x[N,2,8,8] -> Conv(4x2x3x3, pad 1) -> [N,4,8,8] -> ConvTranspose(4->2, 2x2, stride 2) -> [N,2,16,16]
    /// -> Flatten -> [N,512] -> Gemm(transB, 10x512) -> [N,10] -> MatMul(10x6) -> [N,6];
    /// plus a broadcasting batched MatMul y[N,3,4,5] x [5,7].
    /// </summary>
    static Model KnownGraph()
    {
        var m = new Model();
        var g = m.Graph;
        g.Inputs.Add(new ValueInfo("x", new TensorType(DataType.Float, [new Dim("N"), new Dim(2), new Dim(8), new Dim(8)])));
        g.Inputs.Add(new ValueInfo("y", new TensorType(DataType.Float, [new Dim("N"), new Dim(3), new Dim(4), new Dim(5)])));
        foreach (var t in new[] { Weight("wc", 4, 2, 3, 3), Weight("wt", 4, 2, 2, 2), Weight("wg", 10, 512), Weight("bg", 10), Weight("wm", 10, 6), Weight("wb", 5, 7) })
            g.Initializers[t.Name] = t;
        g.Nodes.Add(new Node("Conv", ["x", "wc"], ["c"], "conv").Set(NodeAttribute.Of("pads", new long[] { 1, 1, 1, 1 })));
        g.Nodes.Add(new Node("ConvTranspose", ["c", "wt"], ["ct"], "convT").Set(NodeAttribute.Of("strides", new long[] { 2, 2 })));
        g.Nodes.Add(new Node("Flatten", ["ct"], ["f"], "flatten").Set(NodeAttribute.Of("axis", 1L)));
        g.Nodes.Add(new Node("Gemm", ["f", "wg", "bg"], ["gm"], "gemm").Set(NodeAttribute.Of("transB", 1L)));
        g.Nodes.Add(new Node("MatMul", ["gm", "wm"], ["out"], "matmul"));
        g.Nodes.Add(new Node("MatMul", ["y", "wb"], ["out2"], "batched"));
        g.Outputs.Add(new ValueInfo("out", new TensorType(DataType.Float, null)));
        g.Outputs.Add(new ValueInfo("out2", new TensorType(DataType.Float, null)));
        return m;
    }

    [Fact]
    public void FlopCounterGivesTheAnalyticCount()
    {
        const long n = 3;
        double conv = 2.0 * n * 4 * 8 * 8 * 2 * 3 * 3;       // N x Cout x Hout x Wout x Cin x kh x kw
        double convT = 2.0 * n * 4 * 8 * 8 * 2 * 2 * 2;      // N x Cin x Hin x Win x Cout x kh x kw
        double gemm = 2.0 * n * 10 * 512;                    // M x N x K
        double matmul = 2.0 * n * 6 * 10 + 2.0 * n * 3 * 4 * 7 * 5;
        var model = KnownGraph();
        var r = FlopCounter.Count(model, n);
        Assert.Empty(r.Skipped);
        Assert.True(r.Counted == 5, string.Join(", ", r.ByOpType.Select(kv => $"{kv.Key} {kv.Value}")));
        Assert.Equal(conv, r.ByOpType["Conv"]);
        Assert.Equal(convT, r.ByOpType["ConvTranspose"]);
        Assert.Equal(gemm, r.ByOpType["Gemm"]);
        Assert.Equal(matmul, r.ByOpType["MatMul"]);
        Assert.Equal(conv + convT + gemm + matmul, r.Total);
        // The model itself keeps its symbolic batch dimension.
        Assert.Equal("N", model.Graph.Inputs[0].Type.Shape![0].Symbol);
        Assert.Equal(2 * r.Total, FlopCounter.Count(model, 2 * n).Total);
    }

    [Fact]
    public void MatMulFlopsFollowNumpyBroadcasting()
    {
        Assert.Equal(2.0 * 2 * 3 * 4 * 5 * 6, FlopCounter.MatMul([2, 3, 4, 5], [3, 5, 6]));
        Assert.Equal(2.0 * 4 * 5, FlopCounter.MatMul([5], [5, 4]));
        Assert.Null(FlopCounter.MatMul([2, 3], [4, 5]));
    }

    [Fact]
    public void PercentilesInterpolateLikeNumpy()
    {
        var v = new List<double> { 1, 2, 3, 4, 5 };
        Assert.Equal(3, BenchmarkChild.Percentile(v, 0.5));
        Assert.Equal(1.4, BenchmarkChild.Percentile(v, 0.1), 12);
        Assert.Equal(4.6, BenchmarkChild.Percentile(v, 0.9), 12);
    }

    [Fact]
    public void ProfileAggregatesKernelTimePerOpTypeWithoutTheFirstRun()
    {
        var file = Path.Combine(_tmp, "p.json");
        File.WriteAllText(file, """
        [
          {"cat":"Session","name":"model_run","ts":0,"dur":100,"args":{}},
          {"cat":"Node","name":"a_kernel_time","ts":10,"dur":50,"args":{"op_name":"MatMul"}},
          {"cat":"Session","name":"model_run","ts":200,"dur":100,"args":{}},
          {"cat":"Node","name":"a_kernel_time","ts":210,"dur":40,"args":{"op_name":"MatMul"}},
          {"cat":"Node","name":"a_fence_before","ts":205,"dur":5,"args":{"op_name":"MatMul"}},
          {"cat":"Node","name":"b_kernel_time","ts":260,"dur":20,"args":{"op_name":"Add"}}
        ]
        """);
        var p = new OpProfile();
        p.Add(file);
        Assert.Equal(40, p.Microseconds["MatMul"]);
        Assert.Equal(20, p.Microseconds["Add"]);
        Assert.Equal(1, p.Calls["MatMul"]);
        Assert.Equal(100, p.RunMicroseconds);
        var md = p.ToMarkdown(steps: 1);
        Assert.Contains("| 1 | MatMul | 0.0 | 66.7% | 1 | 40.0 |", md);
    }

    (int Code, string Out, string Err) Cli(TimeSpan limit, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet", [TestPaths.HostDll, .. args, "--plugins-dir", TestPaths.BuiltInPlugins])
        { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = _tmp };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(limit)) { p.Kill(true); Assert.Fail($"ortfinetune {string.Join(' ', args)} ran past {limit}"); }
        p.WaitForExit();
        log.WriteLine(stdout.Result);
        log.WriteLine(stderr.Result.Length > 6000 ? stderr.Result[^6000..] : stderr.Result);
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    static (int Width, int Height) PngSize(string file)
    {
        var b = File.ReadAllBytes(file);
        Assert.True(b.Length > 8000, $"{file}: only {b.Length} bytes");
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 13, 10, 26, 10 }, b[..8]);
        int Be(int at) => (b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3];
        return (Be(16), Be(20));
    }

    [Fact]
    public void BenchmarkVerbWritesTableJsonAndCharts()
    {
        var output = Path.Combine(_tmp, "bench");
        var (code, stdout, err) = Cli(TimeSpan.FromMinutes(4), "benchmark", "--model", "vit-tiny", "--dataset", "synthetic", "--batch-size", "4",
            "--precisions", "32-true,bf16-true", "--warmup", "1", "--steps", "2", "--classes", "10", "--output", output);
        Assert.True(code == 0, err);

        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, BenchmarkReport.JsonFile)));
        var root = doc.RootElement;
        double peak = root.GetProperty("machine").GetProperty("matmul_peak_gflops").GetDouble();
        Assert.InRange(peak, 1, 1e6);
        Assert.Equal("32-true", root.GetProperty("reference_policy").GetString());
        var policies = root.GetProperty("policies").EnumerateArray().ToList();
        Assert.Equal(["32-true", "bf16-true"], policies.Select(p => p.GetProperty("precision").GetString()));
        double flops = policies[0].GetProperty("flops_per_step").GetDouble();
        Assert.True(flops > 1e8, $"FLOPs per step {flops}");
        foreach (var p in policies)
        {
            Assert.False(p.TryGetProperty("error", out _), p.ToString());
            var steps = p.GetProperty("step_seconds").EnumerateArray().Select(e => e.GetDouble()).ToList();
            Assert.Equal(2, steps.Count);
            Assert.Single(p.GetProperty("warmup_seconds").EnumerateArray());
            double med = p.GetProperty("median_seconds").GetDouble(), p10 = p.GetProperty("p10_seconds").GetDouble(), p90 = p.GetProperty("p90_seconds").GetDouble();
            Assert.True(med > 0 && p10 <= med && med <= p90, $"{p10} {med} {p90}");
            Assert.Equal(steps.Average(), med, 9);   // two steps: the median is their mean
            Assert.Equal(4 / med, p.GetProperty("samples_per_second").GetDouble(), 6);
            Assert.InRange(p.GetProperty("peak_rss_bytes").GetInt64(), 50L << 20, 8L << 30);
            Assert.Equal(flops, p.GetProperty("flops_per_step").GetDouble());   // the same math in every policy
            Assert.Equal(flops / med / 1e9, p.GetProperty("achieved_gflops").GetDouble(), 6);
            Assert.InRange(p.GetProperty("fraction_of_peak").GetDouble(), 1e-5, 2);
            Assert.All(p.GetProperty("step_losses").EnumerateArray(), l => Assert.InRange(l.GetDouble(), 0.5, 5));   // ln(10) = 2.30 at init
            Assert.False(p.TryGetProperty("peak_device_bytes", out _));         // CPU: no device memory
            // the memory model's prediction, reported beside the measured peak (runtime allowance included)
            Assert.InRange(p.GetProperty("predicted_peak_bytes").GetInt64(), 300L << 20, 8L << 30);
            Assert.Contains("memory pattern off", p.GetProperty("memory_settings").GetString());
        }
        Assert.Equal(1.0, policies[0].GetProperty("speedup_vs_reference").GetDouble());
        // The JSON holds the ratio rounded; compare with a tolerance, not by decimal places (rounding boundaries).
        var ratio = policies[0].GetProperty("median_seconds").GetDouble() / policies[1].GetProperty("median_seconds").GetDouble();
        Assert.True(Math.Abs(ratio - policies[1].GetProperty("speedup_vs_reference").GetDouble()) <= 1e-3,
            $"speedup_vs_reference {policies[1].GetProperty("speedup_vs_reference").GetDouble()} vs {ratio}");
        Assert.Equal(policies[0].GetProperty("matmul_nodes").GetInt32(), policies[1].GetProperty("matmul_nodes").GetInt32());
        Assert.True(policies[1].GetProperty("training_nodes").GetInt32() > policies[0].GetProperty("training_nodes").GetInt32(), "bf16-true adds casts");

        var md = File.ReadAllText(Path.Combine(output, BenchmarkReport.MarkdownFile));
        Assert.Contains("| policy | step time median (s) | p10 / p90 (s) | samples/s | peak RSS (MiB) | predicted (MiB) |", md);
        Assert.Contains("| 32-true | ", md);
        Assert.Contains("| bf16-true | ", md);
        Assert.Contains("1.00x | 1.00x |", md);
        Assert.Contains("![time](time.png)", md);
        Assert.Contains("| bf16-true |", stdout);
        foreach (var chart in new[] { BenchmarkReport.TimeChart, BenchmarkReport.MemoryChart })
            Assert.Equal((900, 560), PngSize(Path.Combine(output, chart)));
        Assert.False(File.Exists(Path.Combine(output, BenchmarkReport.LossChart)));       // no epochs run
        Assert.False(File.Exists(Path.Combine(output, BenchmarkReport.ProfileFile)));     // no --profile
    }

    [Fact]
    public void EpochsNeedARealDataset()
    {
        var (code, _, err) = Cli(TimeSpan.FromMinutes(1), "benchmark", "--epochs", "1", "--output", Path.Combine(_tmp, "x"));
        Assert.Equal(1, code);
        Assert.Contains("--epochs needs a real dataset", err);
    }
}
