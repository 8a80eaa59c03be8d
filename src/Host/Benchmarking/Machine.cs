using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Benchmarking;

/// <summary>Facts about the machine and the process the benchmark reads.</summary>
public static class Machine
{
    /// <summary>Peak resident set size of this process (VmHWM in /proc/self/status), bytes; the .NET figure elsewhere.</summary>
    public static long PeakRssBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line[6..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return Process.GetCurrentProcess().PeakWorkingSet64;
    }

    public static string CpuModel()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            if (line != null) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        return RuntimeInformation.ProcessArchitecture.ToString();
    }

    public static string OrtVersion()
    {
        try { return OrtEnv.Instance().GetVersionString(); } catch (Exception e) when (e is OnnxRuntimeException or DllNotFoundException) { return "?"; }
    }

    /// <summary>
    /// The machine's MatMul peak in <paramref name="type"/> as ORT reaches it: one MatMul node,
    /// A[m x k] x B[k x n], on <paramref name="device"/>, best of several runs after two warm-ups. GFLOP/s.
    /// </summary>
    public static double MatMulPeakGflops(DeviceSpec device, int threads, long m = 2048, long k = 1024, long n = 4096, double minSeconds = 1.0, DataType type = DataType.Float)
    {
        var model = new Model();
        var g = model.Graph;
        g.Name = "matmul_peak";
        g.Inputs.Add(new ValueInfo("A", new TensorType(type, [new Dim(m), new Dim(k)])));
        g.Inputs.Add(new ValueInfo("B", new TensorType(type, [new Dim(k), new Dim(n)])));
        g.Outputs.Add(new ValueInfo("C", new TensorType(type, [new Dim(m), new Dim(n)])));
        g.Nodes.Add(new Node("MatMul", ["A", "B"], ["C"], "matmul"));
        using var so = device.CreateSessionOptions(threads, cpuArena: true);
        using var session = new InferenceSession(ModelIO.ToBytes(model), so);
        using var dev = new DeviceValues(device, session);
        var rng = new Random(7);
        byte[] Random(long count)
        {
            var f = new float[count];
            for (long i = 0; i < count; i++) f[i] = (float)(rng.NextDouble() - 0.5);
            return type switch
            {
                DataType.Float => MemoryMarshal.AsBytes(f.AsSpan()).ToArray(),
                DataType.Float16 => MemoryMarshal.AsBytes(f.Select(v => (Half)v).ToArray().AsSpan()).ToArray(),
                // bfloat16: the high half of the fp32 bits (truncation is fine for random data)
                DataType.BFloat16 => MemoryMarshal.AsBytes(f.Select(v => (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16)).ToArray().AsSpan()).ToArray(),
                _ => throw new ArgumentException($"MatMul peak: unsupported type {type}", nameof(type)),
            };
        }
        using var a = dev.Upload(type, [m, k], Random(m * k));
        using var b = dev.Upload(type, [k, n], Random(k * n));
        using var c = dev.Allocate(type, [m, n]);
        using var binding = session.CreateIoBinding();
        binding.BindInput("A", a);
        binding.BindInput("B", b);
        binding.BindOutput("C", c);
        using var ro = new RunOptions();
        for (int i = 0; i < 2; i++) session.RunWithBinding(ro, binding);
        double best = double.MaxValue, spent = 0;
        for (int i = 0; i < 50 && (i < 3 || spent < minSeconds); i++)
        {
            var t = Stopwatch.StartNew();
            session.RunWithBinding(ro, binding);
            binding.SynchronizeBoundOutputs();
            double s = t.Elapsed.TotalSeconds;
            best = Math.Min(best, s); spent += s;
        }
        return 2.0 * m * n * k / best / 1e9;
    }
}

/// <summary>
/// Device memory in use on a CUDA GPU, through NVML (libnvidia-ml.so.1, shipped with the driver). Used
/// memory is device-wide; the benchmark subtracts the level before its sessions were created and keeps
/// the maximum seen after each step (ORT's CUDA arena does not shrink, so that is its peak).
/// </summary>
public sealed class GpuMemory
{
    readonly IntPtr _device;
    public long Baseline { get; }
    public long Peak { get; private set; }

    GpuMemory(IntPtr device) { _device = device; Baseline = Used(); }

    public static GpuMemory? TryOpen(DeviceSpec device, out string? why)
    {
        why = null;
        if (!device.IsCuda) { why = "CPU run: no device memory"; return null; }
        try
        {
            int r = nvmlInit_v2();
            if (r != 0) { why = $"nvmlInit failed ({r})"; return null; }
            r = nvmlDeviceGetHandleByIndex_v2((uint)device.Index, out var h);
            if (r != 0) { why = $"nvmlDeviceGetHandleByIndex({device.Index}) failed ({r})"; return null; }
            return new GpuMemory(h);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { why = "NVML (libnvidia-ml.so.1) not found"; return null; }
    }

    public long Used() => nvmlDeviceGetMemoryInfo(_device, out var info) == 0 ? (long)info.Used : 0;

    /// <summary>Samples now; returns the peak above the baseline so far.</summary>
    public long Sample() { Peak = Math.Max(Peak, Used() - Baseline); return Peak; }

    [StructLayout(LayoutKind.Sequential)]
    struct NvmlMemory { public ulong Total, Free, Used; }

    [DllImport("libnvidia-ml.so.1")] static extern int nvmlInit_v2();
    [DllImport("libnvidia-ml.so.1")] static extern int nvmlDeviceGetHandleByIndex_v2(uint index, out IntPtr device);
    [DllImport("libnvidia-ml.so.1")] static extern int nvmlDeviceGetMemoryInfo(IntPtr device, out NvmlMemory memory);
}
