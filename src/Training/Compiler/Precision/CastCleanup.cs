using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Precision;

/// <summary>
/// Removes redundant casts: a Cast to the type its input already has; a Cast back of a lossless
/// widening cast (fp16/bf16 -> fp32 -> fp16/bf16 is the identity); duplicate Casts of one value to one
/// type. A lossy round trip (fp32 -> 16-bit -> fp32) is kept: its rounding is the 16-bit compute. Casts that
/// name a graph output are kept. With <c>keepApart</c> a duplicate is merged only while the first cast's result is
/// still read at or after the duplicate's position: in a training graph a forward Cast and its backward twin
/// stay two nodes, so the cast result is not kept alive from the forward to the backward (the backward recasts
/// the saved value instead). Returns the number of Cast nodes removed.
/// </summary>
public static class CastCleanup
{
    public static int Run(Graph g, bool keepApart = false)
    {
        int removed = 0;
        var outputs = g.Outputs.Select(o => o.Name).ToHashSet();
        while (true)
        {
            var producers = g.Producers();
            var replace = new Dictionary<string, string>();
            var seen = new Dictionary<(string, long), string>();
            var lastRead = new Dictionary<string, int>();
            // With keepApart, positions are those of ORT's execution order (a backward node that reads forward values
            // only, e.g. a composite's upcast of a saved input, sits early in a topologically sorted list but runs late).
            var nodes = keepApart ? ExecutionOrder(g) : g.Nodes;
            if (keepApart)
                for (int k = 0; k < nodes.Count; k++)
                {
                    foreach (var i in nodes[k].Inputs) if (i.Length > 0) lastRead[i] = k;
                    foreach (var a in nodes[k].Attributes.Values) if (a.G != null) foreach (var v in a.G.OuterScopeReads()) lastRead[v] = k;
                }
            for (int at = 0; at < nodes.Count; at++)
            {
                var n = nodes[at];
                if (n.OpType != "Cast" || n.Domain != "" || outputs.Contains(n.Output(0))) continue;
                var x = Resolve(replace, n.Input(0));
                var to = (DataType)n.GetInt("to", 0);
                var xt = g.TypeOf(x)?.ElemType;
                if (xt == to) { replace[n.Output(0)] = x; continue; }
                if (producers.TryGetValue(x, out var p) && p.OpType == "Cast" && p.Domain == "")
                {
                    var src = p.Input(0);
                    var st = g.TypeOf(src)?.ElemType;
                    if (st == to && xt is { } mid && Lossless(to, mid)) { replace[n.Output(0)] = src; continue; }
                }
                if (seen.TryGetValue((x, (long)to), out var first)
                    && (!keepApart || outputs.Contains(first) || lastRead.GetValueOrDefault(first, -1) >= at))
                {
                    replace[n.Output(0)] = first;
                    if (keepApart) lastRead[first] = Math.Max(lastRead.GetValueOrDefault(first, -1), lastRead.GetValueOrDefault(n.Output(0), -1));
                    continue;
                }
                seen[(x, (long)to)] = n.Output(0);
            }
            if (replace.Count == 0) break;
            foreach (var n in g.Nodes)
                for (int i = 0; i < n.Inputs.Count; i++)
                    if (n.Inputs[i].Length > 0 && replace.ContainsKey(n.Inputs[i])) n.Inputs[i] = Resolve(replace, n.Inputs[i]);
            removed += RemoveUnusedCasts(g, outputs);
        }
        removed += RemoveUnusedCasts(g, outputs);
        return removed;
    }

    /// <summary>ORT's execution order of <paramref name="g"/> once arranged for it (Scheduling.OrtNodeOrder); the node list is left as it was.</summary>
    static List<Node> ExecutionOrder(Graph g)
    {
        var saved = g.Nodes.ToList();
        Scheduling.OrtNodeOrder.ForDepthFirstExecution(g);
        var order = Scheduling.OrtNodeOrder.ExecutionOrder(g);
        g.Nodes.Clear();
        g.Nodes.AddRange(saved);
        return order;
    }

    static string Resolve(Dictionary<string, string> map, string v)
    {
        while (map.TryGetValue(v, out var r)) v = r;
        return v;
    }

    /// <summary>Whether every value of <paramref name="narrow"/> survives a round trip through <paramref name="wide"/>.</summary>
    public static bool Lossless(DataType narrow, DataType wide) => (narrow, wide) switch
    {
        (DataType.Float16 or DataType.BFloat16, DataType.Float or DataType.Double) => true,
        (DataType.Float, DataType.Double) => true,
        _ => false,
    };

    static int RemoveUnusedCasts(Graph g, HashSet<string> outputs)
    {
        int removed = 0;
        while (true)
        {
            var used = new HashSet<string>(outputs);
            foreach (var n in g.Nodes) foreach (var i in n.Inputs) used.Add(i);
            foreach (var n in g.Nodes) foreach (var a in n.Attributes.Values) if (a.G != null) foreach (var v in a.G.OuterScopeReads()) used.Add(v);
            int k = g.Nodes.RemoveAll(n => n.OpType == "Cast" && n.Domain == "" && !used.Contains(n.Output(0)));
            if (k == 0) return removed;
            removed += k;
        }
    }
}
