using System.Collections.Concurrent;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Precision;

namespace OrtFinetune.Training.Runtime;

/// <summary>
/// Asks ONNX Runtime itself which 16-bit kernels an execution provider has: each distinct (op, opset,
/// input/output dtypes) is built as a one-node model and loaded in a session for the device, with graph
/// optimizations off. A missing kernel shows as a failed session (bf16 on the CPU, any node on CUDA with
/// CPU fallback disabled) or, for fp16 on the CPU, as Casts that ORT's own fallback inserted around the
/// node (read back from the saved optimized model). Answers are cached per process and device.
/// </summary>
public sealed class KernelProbe : IKernelAvailability, IDisposable
{
    static readonly ConcurrentDictionary<string, KernelProbe> Probes = new();

    readonly DeviceSpec _device;
    readonly ConcurrentDictionary<string, ProbeResult> _cache = new();
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-probe-").FullName;

    public readonly record struct ProbeResult(bool Available, string Detail);

    KernelProbe(DeviceSpec device) => _device = device;

    /// <summary>The process-wide probe of a device.</summary>
    public static KernelProbe For(DeviceSpec device) => Probes.GetOrAdd(device.ToString(), _ => new KernelProbe(device));

    public string Provider => _device.IsCuda ? $"CUDAExecutionProvider ({_device})" : "CPUExecutionProvider";

    /// <summary>Everything probed so far: key (op@opset(input dtypes)->(output dtypes)) and the answer.</summary>
    public IReadOnlyDictionary<string, ProbeResult> Results => _cache;

    public bool Has(KernelQuery q)
    {
        if (q.ProbedType == null) return true;
        return _cache.GetOrAdd(q.Key, _ => Probe(q)).Available;
    }

    /// <summary>Probes a plain (op, dtype) pair with a canonical node: elementwise ops get two inputs of rank 2.</summary>
    public bool Has(string opType, DataType t, int inputs = 2, long opset = 17, params Onnx.NodeAttribute[] attrs)
    {
        var n = new Node(opType, Enumerable.Range(0, inputs).Select(i => "x" + i), ["y"]);
        foreach (var a in attrs) n.Set(a);
        var shape = new Dim[] { new("a"), new("b") };
        return Has(new KernelQuery(opType, "", opset, Enumerable.Range(0, inputs).Select(_ => ((DataType, Dim[]?, Tensor?)?)(t, shape, null)).ToList(), [t], n));
    }

    ProbeResult Probe(KernelQuery q)
    {
        // Limits the CPU kernels check only when they run (the session loads): found by running training graphs.
        if (!_device.IsCuda && q.OpType is "ScatterElements" or "ScatterND" && q.Attributes.GetString("reduction", "none") != "none" && q.ProbedType is DataType.Float16 or DataType.BFloat16)
            return new ProbeResult(false, "the CPU kernel loads but rejects 16-bit data with a reduction at run time");
        var m = new Model();
        m.Opsets.Clear();
        m.Opsets[""] = q.Opset;
        if (q.Domain.Length > 0) m.Opsets[q.Domain] = 1;
        var g = m.Graph;
        var ins = new List<string>();
        for (int i = 0; i < q.Inputs.Count; i++)
        {
            if (q.Inputs[i] is not { } x) { ins.Add(""); continue; }
            var name = "x" + i;
            ins.Add(name);
            if (x.Constant != null) g.Initializers[name] = x.Constant.WithName(name);
            else g.Inputs.Add(new ValueInfo(name, new TensorType(x.Type, x.Shape)));
        }
        var outs = new List<string>();
        for (int k = 0; k < q.Outputs.Count; k++)
        {
            if (q.Outputs[k] is not { } t) { outs.Add(""); continue; }
            outs.Add("y" + k);
            g.Outputs.Add(new ValueInfo("y" + k, new TensorType(t, null)));
        }
        var node = new Node(q.OpType, ins, outs, "probe", q.Domain);
        foreach (var a in q.Attributes.Attributes.Values) node.Set(a);
        g.Nodes.Add(node);
        var optimized = Path.Combine(_dir, $"{Guid.NewGuid():N}.onnx");
        try
        {
            using var so = _device.CreateSessionOptions(1, cpuArena: false);
            so.GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL;
            so.LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_FATAL;
            so.OptimizedModelFilePath = optimized;
            if (_device.IsCuda) so.AddSessionConfigEntry("session.disable_cpu_ep_fallback", "1");
            using (new InferenceSession(ModelIO.ToBytes(m), so)) { }
            if (File.Exists(optimized))
            {
                var after = ModelIO.Load(optimized).Graph.Nodes;
                if (after.Any(n => n.OpType == "Cast") && q.OpType != "Cast")
                    return new ProbeResult(false, "ORT inserted casts around it (no kernel; it would run in fp32 through ORT's own fallback)");
            }
            return new ProbeResult(true, "loads");
        }
        catch (OnnxRuntimeException e)
        {
            var msg = e.Message.Trim();
            return new ProbeResult(false, msg.Length > 200 ? msg[..200] : msg);
        }
        finally
        {
            try { if (File.Exists(optimized)) File.Delete(optimized); } catch (IOException) { }
        }
    }

    /// <summary>Printable table of the probed kernels.</summary>
    public string Describe() => string.Join("\n", _cache.OrderBy(kv => kv.Key).Select(kv => $"{(kv.Value.Available ? "yes" : "NO ")}  {kv.Key}{(kv.Value.Available ? "" : "  -- " + kv.Value.Detail)}"));

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}
