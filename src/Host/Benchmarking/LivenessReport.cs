using System.Globalization;
using System.Text;
using System.Text.Json;
using OrtFinetune.Onnx;

namespace OrtFinetune.Host.Benchmarking;

/// <summary>
/// Activation memory of one Run, estimated from what ORT really executed: the node order and output
/// shapes of an ORT profile (the last model_run in it) over the graph ORT optimized (saved with
/// SessionOptions.OptimizedModelFilePath, so fused nodes are known). A value is resident from the node
/// that produces it to its last consumer in that order; outputs of Reshape/Squeeze/Unsqueeze/Flatten/
/// Identity share their input's buffer. Graph inputs and graph outputs (parameters, gradients, state:
/// bound buffers) are not counted. ORT's in-place reuse of a dying input is ignored, so this is an
/// upper bound of what the allocator holds, without allocator overheads.
/// </summary>
public sealed class LivenessReport
{
    public sealed record Buffer(string Value, long Bytes, int Produced, int LastUse, string Producer, string ProducerOp, string LastConsumer);

    static readonly HashSet<string> AliasOps = ["Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"];

    public List<string> Order { get; } = new();
    public List<Buffer> Buffers { get; } = new();
    public long[] LiveBytes { get; private set; } = [];
    public int PeakAt { get; private set; }
    public long PeakBytes => LiveBytes.Length > 0 ? LiveBytes[PeakAt] : 0;
    public int UnknownNodes { get; private set; }

    public static LivenessReport FromProfile(string profileJson, Model optimized)
    {
        var r = new LivenessReport();
        var g = optimized.Graph;
        var byName = new Dictionary<string, Node>();
        foreach (var n in g.Nodes) if (n.Name.Length > 0) byName.TryAdd(n.Name, n);
        using var doc = JsonDocument.Parse(File.ReadAllText(profileJson));
        var events = doc.RootElement.EnumerateArray().Where(e => e.TryGetProperty("cat", out _) && e.TryGetProperty("ts", out _)).ToList();
        static string Name(JsonElement e) => e.TryGetProperty("name", out var n) ? n.GetString() ?? "" : "";
        var lastRun = events.Where(e => e.GetProperty("cat").GetString() == "Session" && Name(e) == "model_run").Select(e => e.GetProperty("ts").GetDouble()).DefaultIfEmpty(double.MinValue).Max();
        var executed = new List<(Node Node, List<(string Type, long[] Shape)> Outs)>();
        foreach (var e in events.Where(e => e.GetProperty("cat").GetString() == "Node" && Name(e).EndsWith("_kernel_time", StringComparison.Ordinal) && e.GetProperty("ts").GetDouble() >= lastRun).OrderBy(e => e.GetProperty("ts").GetDouble()))
        {
            var name = Name(e)[..^"_kernel_time".Length];
            if (!byName.TryGetValue(name, out var node)) { r.UnknownNodes++; continue; }
            var outs = new List<(string, long[])>();
            if (e.TryGetProperty("args", out var args) && args.TryGetProperty("output_type_shape", out var ots))
                foreach (var o in ots.EnumerateArray())
                    foreach (var p in o.EnumerateObject())
                        outs.Add((p.Name, p.Value.EnumerateArray().Select(x => x.GetInt64()).ToArray()));
            executed.Add((node, outs));
        }

        var excluded = new HashSet<string>(g.Inputs.Select(i => i.Name).Concat(g.Outputs.Select(o => o.Name)).Concat(g.Initializers.Keys));
        var position = new Dictionary<string, int>();
        for (int i = 0; i < executed.Count; i++) r.Order.Add(executed[i].Node.Name);
        // Buffer of each value (aliases resolve to their source), production step and size.
        var bufferOf = new Dictionary<string, string>();
        var info = new Dictionary<string, (long Bytes, int Produced, string Producer, string Op)>();
        var lastUse = new Dictionary<string, (int At, string By)>();
        for (int i = 0; i < executed.Count; i++)
        {
            var (n, outs) = executed[i];
            foreach (var v in n.Inputs)
                if (v.Length > 0 && bufferOf.TryGetValue(v, out var buf)) lastUse[buf] = (i, n.Name);
            var present = n.Outputs.Where(o => o.Length > 0).ToList();
            for (int k = 0; k < present.Count; k++)
            {
                var o = present[k];
                if (AliasOps.Contains(n.OpType) && n.Domain == "" && k == 0 && n.Inputs.Count > 0)
                {
                    if (bufferOf.TryGetValue(n.Inputs[0], out var src)) { bufferOf[o] = src; lastUse[src] = (i, n.Name); }
                    continue;
                }
                if (excluded.Contains(o)) continue;
                long bytes = k < outs.Count ? outs[k].Shape.Aggregate(1L, (a, d) => a * Math.Max(d, 0)) * SizeOf(outs[k].Type) : 0;
                bufferOf[o] = o;
                info[o] = (bytes, i, n.Name, (n.Domain.Length > 0 ? n.Domain + "." : "") + n.OpType);
                lastUse[o] = (i, n.Name);
            }
        }
        var delta = new long[executed.Count + 1];
        foreach (var (v, (bytes, produced, producer, op)) in info)
        {
            var (last, by) = lastUse[v];
            r.Buffers.Add(new Buffer(v, bytes, produced, last, producer, op, by));
            delta[produced] += bytes;
            delta[last + 1] -= bytes;
        }
        r.LiveBytes = new long[executed.Count];
        long live = 0;
        for (int i = 0; i < executed.Count; i++)
        {
            live += delta[i];
            r.LiveBytes[i] = live;
            if (live > r.LiveBytes[r.PeakAt]) r.PeakAt = i;
        }
        return r;
    }

    static long SizeOf(string type) => type switch
    {
        "float" or "int32" or "uint32" => 4,
        "double" or "int64" or "uint64" => 8,
        "float16" or "bfloat16" or "int16" or "uint16" => 2,
        _ => 1,
    };

    /// <summary>Buffers resident at step <paramref name="at"/>.</summary>
    public IEnumerable<Buffer> LiveAt(int at) => Buffers.Where(b => b.Produced <= at && b.LastUse >= at);

    public string ToMarkdown(int top = 400)
    {
        static string M(long b) => (b / 1048576.0).ToString("N1", CultureInfo.InvariantCulture);
        var sb = new StringBuilder();
        sb.AppendLine(FormattableString.Invariant($"Peak of resident activations: **{M(PeakBytes)} MiB** at node {PeakAt + 1} of {Order.Count} (`{(Order.Count > 0 ? Order[PeakAt] : "")}`)."));
        if (UnknownNodes > 0) sb.AppendLine(FormattableString.Invariant($"({UnknownNodes} profiled nodes not found in the optimized model were skipped.)"));
        var live = LiveAt(PeakAt).ToList();
        sb.AppendLine();
        sb.AppendLine("Resident at the peak, by producer op type:");
        sb.AppendLine();
        sb.AppendLine("| producer op | values | MiB |");
        sb.AppendLine("|---|---|---|");
        foreach (var grp in live.GroupBy(b => b.ProducerOp).OrderByDescending(x => x.Sum(b => b.Bytes)))
            sb.AppendLine(FormattableString.Invariant($"| {grp.Key} | {grp.Count()} | {M(grp.Sum(b => b.Bytes))} |"));
        sb.AppendLine();
        sb.AppendLine("| MiB | value | producer (op) | last consumer | produced at | last use at |");
        sb.AppendLine("|---|---|---|---|---|---|");
        foreach (var b in live.OrderByDescending(b => b.Bytes).Take(top))
            sb.AppendLine(FormattableString.Invariant($"| {M(b.Bytes)} | `{b.Value}` | `{b.Producer}` ({b.ProducerOp}) | `{b.LastConsumer}` | {b.Produced + 1} | {b.LastUse + 1} |"));
        return sb.ToString();
    }
}
