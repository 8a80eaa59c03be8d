using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Fusion;

/// <summary>
/// Recomputation for the backward: a chain of forward nodes is cloned just before the first backward node that reads one
/// of its outputs, and the backward's reads of those outputs go to the clones, so the forward's values die in the forward.
/// The clones compute exactly what the forward computed (same ops on the same inputs): gradients do not change. ORT's
/// CommonSubexpressionElimination, which would merge clones with their forward twins, is off in training sessions
/// (<c>Device.TrainingDisabledOptimizers</c>). Used by <see cref="AttentionRecompute"/> and <see cref="ParameterCastRecompute"/>.
/// </summary>
public sealed class BackwardRecompute(Graph g, IReadOnlySet<Node> forward, long opset)
{
    readonly Dictionary<string, List<Node>> _consumers = g.Consumers();
    readonly GraphBuilder _b = new(g, opset);
    readonly List<(int At, List<Node> Clones)> _inserts = new();
    Dictionary<Node, int>? _position;

    /// <summary>Whether a backward node (one not in the forward set) reads <paramref name="n"/>'s first output.</summary>
    public bool ReadByBackward(Node n) => Backward(n.Output(0)).Count > 0;

    List<Node> Backward(string v) => _consumers.TryGetValue(v, out var cs) ? cs.Where(c => !forward.Contains(c)).ToList() : [];

    /// <summary>Clones <paramref name="chain"/> (forward nodes in order, each with one output) for its backward readers.</summary>
    public void Add(IReadOnlyList<Node> chain)
    {
        if (_position == null)
        {
            _position = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
            for (int i = 0; i < g.Nodes.Count; i++) _position[g.Nodes[i]] = i;
        }
        var rename = new Dictionary<string, string>();
        var clones = new List<Node>();
        foreach (var n in chain)
        {
            var o = n.Output(0);
            var c = new Node(n.OpType, n.Inputs.Select(i => rename.GetValueOrDefault(i, i)), [_b.Unique(o + "/recompute")], _b.Unique((n.Name.Length > 0 ? n.Name : n.OpType) + "/recompute"), n.Domain);
            foreach (var a in n.Attributes.Values) c.Set(a);
            if (g.TypeOf(o) is { } t) g.ValueTypes[c.Output(0)] = t;
            rename[o] = c.Output(0);
            clones.Add(c);
        }
        int first = int.MaxValue;
        foreach (var n in chain)
            foreach (var c in Backward(n.Output(0)))
            {
                for (int i = 0; i < c.Inputs.Count; i++) if (c.Inputs[i] == n.Output(0)) c.Inputs[i] = rename[n.Output(0)];
                first = Math.Min(first, _position[c]);
            }
        if (first < int.MaxValue) _inserts.Add((first, clones));
    }

    /// <summary>Inserts the clones into the graph; returns how many chains were recomputed.</summary>
    public int Apply()
    {
        foreach (var (pos, clones) in _inserts.OrderByDescending(x => x.At)) g.Nodes.InsertRange(pos, clones);
        int n = _inserts.Count;
        _inserts.Clear();
        return n;
    }
}
