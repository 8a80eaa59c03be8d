namespace OrtFinetune.Onnx;

/// <summary>A mutable ONNX graph: nodes, boundary values, initializers and known value types.</summary>
public sealed class Graph
{
    /// <summary>The graph name.</summary>
    public string Name { get; set; } = "graph";
    /// <summary>The nodes, in an order where every input is defined before use (see <see cref="SortTopologically"/>).</summary>
    public List<Node> Nodes { get; } = new();
    /// <summary>Graph inputs (fed at run time).</summary>
    public List<ValueInfo> Inputs { get; } = new();
    /// <summary>Graph outputs.</summary>
    public List<ValueInfo> Outputs { get; } = new();
    /// <summary>Initializers by name, in insertion order of the file.</summary>
    public Dictionary<string, Tensor> Initializers { get; } = new();
    /// <summary>Types of intermediate values (and anything else known), filled by loading and shape inference.</summary>
    public Dictionary<string, TensorType> ValueTypes { get; } = new();

    /// <summary>Type of a value: graph input, initializer or inferred intermediate; null when unknown.</summary>
    public TensorType? TypeOf(string name)
    {
        if (Initializers.TryGetValue(name, out var t)) return t.TensorType;
        if (ValueTypes.TryGetValue(name, out var vt)) return vt;
        foreach (var i in Inputs) if (i.Name == name) return i.Type;
        foreach (var o in Outputs) if (o.Name == name) return o.Type;
        return null;
    }

    /// <summary>Map from value name to the node that produces it.</summary>
    public Dictionary<string, Node> Producers()
    {
        var map = new Dictionary<string, Node>();
        foreach (var n in Nodes)
            foreach (var o in n.Outputs)
                if (o.Length > 0 && !map.TryAdd(o, n))
                    throw new OnnxFormatException($"value '{o}' is produced twice: by {map[o].Describe()} and {n.Describe()}");
        return map;
    }

    /// <summary>Map from value name to the nodes that read it (in node order).</summary>
    public Dictionary<string, List<Node>> Consumers()
    {
        var map = new Dictionary<string, List<Node>>();
        foreach (var n in Nodes)
            foreach (var i in n.Inputs)
                if (i.Length > 0)
                {
                    if (!map.TryGetValue(i, out var l)) map[i] = l = new List<Node>();
                    if (l.Count == 0 || l[^1] != n) l.Add(n);
                }
        return map;
    }

    /// <summary>All value names defined anywhere in the graph.</summary>
    public HashSet<string> AllNames()
    {
        var s = new HashSet<string>(Initializers.Keys);
        foreach (var i in Inputs) s.Add(i.Name);
        foreach (var n in Nodes) foreach (var o in n.Outputs) if (o.Length > 0) s.Add(o);
        return s;
    }

    /// <summary>
    /// Sorts <see cref="Nodes"/> topologically, stably: of the nodes whose inputs are all defined, the one earliest in
    /// the list comes first, so a list that is already sorted stays exactly as it is (the training graph's node order
    /// is arranged for ORT's execution order, see the training compiler's Scheduling.OrtNodeOrder, and passes that sort
    /// again, shape inference among them, must not undo it).
    /// Throws naming a node whose input is never defined, or a cycle.
    /// </summary>
    public void SortTopologically()
    {
        var defined = new HashSet<string>(Initializers.Keys);
        foreach (var i in Inputs) defined.Add(i.Name);
        var producers = Producers();
        var waiting = new Dictionary<string, List<Node>>();
        var missing = new Dictionary<Node, int>();
        var index = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        var ready = new PriorityQueue<Node, int>();
        foreach (var n in Nodes)
        {
            index[n] = index.Count;
            int m = 0;
            foreach (var i in n.Inputs.Where(i => i.Length > 0).Distinct())
            {
                if (defined.Contains(i)) continue;
                if (!producers.ContainsKey(i))
                    throw new OnnxFormatException($"{n.Describe()} reads '{i}', which is not a graph input, initializer or node output");
                m++;
                if (!waiting.TryGetValue(i, out var l)) waiting[i] = l = new List<Node>();
                l.Add(n);
            }
            missing[n] = m;
            if (m == 0) ready.Enqueue(n, index[n]);
        }
        var order = new List<Node>(Nodes.Count);
        while (ready.Count > 0)
        {
            var n = ready.Dequeue();
            order.Add(n);
            foreach (var o in n.Outputs)
                if (o.Length > 0 && waiting.TryGetValue(o, out var l))
                    foreach (var c in l) if (--missing[c] == 0) ready.Enqueue(c, index[c]);
        }
        if (order.Count != Nodes.Count)
        {
            var stuck = Nodes.First(n => missing[n] > 0);
            throw new OnnxFormatException($"the graph has a cycle through {stuck.Describe()}");
        }
        Nodes.Clear();
        Nodes.AddRange(order);
    }

    /// <summary>Removes nodes whose outputs do not reach a graph output, and unused initializers.</summary>
    public void RemoveDeadNodes()
    {
        var needed = new HashSet<string>(Outputs.Select(o => o.Name));
        var keep = new List<Node>();
        for (int k = Nodes.Count - 1; k >= 0; k--)
        {
            var n = Nodes[k];
            if (n.Outputs.Any(needed.Contains))
            {
                keep.Add(n);
                foreach (var i in n.Inputs) if (i.Length > 0) needed.Add(i);
                foreach (var g in n.Attributes.Values.Where(a => a.G != null)) foreach (var v in g.G!.OuterScopeReads()) needed.Add(v);
            }
        }
        keep.Reverse();
        Nodes.Clear(); Nodes.AddRange(keep);
        foreach (var name in Initializers.Keys.Where(k => !needed.Contains(k)).ToList()) Initializers.Remove(name);
    }

    /// <summary>A copy whose node, input, output and type lists can be changed freely; tensors are shared (immutable).</summary>
    public Graph Clone()
    {
        var g = new Graph { Name = Name };
        foreach (var n in Nodes)
        {
            var c = new Node(n.OpType, n.Inputs, n.Outputs, n.Name, n.Domain);
            foreach (var a in n.Attributes.Values) c.Set(a);
            g.Nodes.Add(c);
        }
        g.Inputs.AddRange(Inputs);
        g.Outputs.AddRange(Outputs);
        foreach (var (k, v) in Initializers) g.Initializers[k] = v;
        foreach (var (k, v) in ValueTypes) g.ValueTypes[k] = v;
        return g;
    }

    /// <summary>Names a subgraph reads that it does not define itself (outer-scope references).</summary>
    public IEnumerable<string> OuterScopeReads()
    {
        var defined = AllNames();
        foreach (var n in Nodes)
            foreach (var i in n.Inputs)
                if (i.Length > 0 && !defined.Contains(i)) yield return i;
    }
}

/// <summary>A model: graph plus opset imports and metadata.</summary>
public sealed class Model
{
    /// <summary>The main graph.</summary>
    public Graph Graph { get; set; } = new();
    /// <summary>ONNX IR version written to the file.</summary>
    public long IrVersion { get; set; } = 8;
    /// <summary>Opset version per domain ("" = ai.onnx).</summary>
    public Dictionary<string, long> Opsets { get; } = new() { [""] = 17 };
    /// <summary>Producer name written to the file.</summary>
    public string ProducerName { get; set; } = "OrtFinetune";
    /// <summary>Producer version written to the file.</summary>
    public string ProducerVersion { get; set; } = "0.1";
    /// <summary>Metadata properties (key, value).</summary>
    public Dictionary<string, string> Metadata { get; } = new();

    /// <summary>A copy whose graph can be changed freely (tensors are shared; they are immutable).</summary>
    public Model Clone()
    {
        var m = new Model { Graph = Graph.Clone(), IrVersion = IrVersion, ProducerName = ProducerName, ProducerVersion = ProducerVersion };
        m.Opsets.Clear();
        foreach (var (k, v) in Opsets) m.Opsets[k] = v;
        foreach (var (k, v) in Metadata) m.Metadata[k] = v;
        return m;
    }

    /// <summary>The opset version imported for <paramref name="domain"/>, or 0 when none.</summary>
    public long OpsetOf(string domain) => Opsets.TryGetValue(Node.NormalizeDomain(domain), out var v) ? v : 0;
}
