using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Scheduling;

/// <summary>
/// Arranges a finished graph's node list so that ONNX Runtime runs it in the order the list gives.
/// <para>
/// ORT does not run nodes in file order. Its default execution order (GraphViewer) is a depth-first
/// post-order over input edges starting from the leaf nodes (nodes no other node reads), taking the
/// leaf with the highest index (file position) first; a node runs as soon as the search from some
/// leaf reaches it. In a training graph the leaves are the loss, the metrics and one node per
/// gradient (the gradient output or its accumulation). Left in file order, the leaf of the gradient
/// the backward computes LAST (the first layer's) is searched first: that search runs the forward
/// and the whole chain of activation gradients, but none of the other layers' weight-gradient
/// products, which then all run at the end, keeping every layer's saved inputs and incoming
/// gradients alive until then (ViT-B/16: the peak moved from the forward into the backward).
/// </para>
/// <see cref="ForDepthFirstExecution"/> moves the leaves to the end of the list in reverse order, so
/// the leaf that comes first in the intended (topological) order has the highest index and is searched
/// first: each search then runs just the part of the backward its gradient needs, and every weight
/// gradient runs right after the activation gradient it reads. The list stays topologically sorted.
/// </summary>
public static class OrtNodeOrder
{
    /// <summary>Moves the leaf nodes of <paramref name="g"/> (already in the intended order) to its end, last leaf first. Returns how many.</summary>
    public static int ForDepthFirstExecution(Graph g)
    {
        var leaves = Leaves(g);
        if (leaves.Count < 2) return leaves.Count;
        var isLeaf = leaves.ToHashSet(ReferenceEqualityComparer.Instance);
        var inner = g.Nodes.Where(n => !isLeaf.Contains(n)).ToList();
        leaves.Reverse();
        g.Nodes.Clear();
        g.Nodes.AddRange(inner);
        g.Nodes.AddRange(leaves);
        return leaves.Count;
    }

    /// <summary>
    /// Undoes <see cref="ForDepthFirstExecution"/>: the leaves at the end of the list go back into the intended order (still
    /// at the end), so a pass that turns leaves into inner nodes (e.g. Optimizers.GradientBuckets) sees the intended order
    /// and arranges the graph again afterwards.
    /// </summary>
    public static void RestoreIntendedOrder(Graph g)
    {
        var leaves = Leaves(g).ToHashSet(ReferenceEqualityComparer.Instance);
        int tail = 0;
        while (tail < g.Nodes.Count && leaves.Contains(g.Nodes[g.Nodes.Count - 1 - tail])) tail++;
        g.Nodes.Reverse(g.Nodes.Count - tail, tail);
    }

    static List<Node> Leaves(Graph g)
    {
        var read = new HashSet<string>();
        foreach (var n in g.Nodes)
        {
            foreach (var i in n.Inputs) if (i.Length > 0) read.Add(i);
            foreach (var a in n.Attributes.Values) if (a.G != null) foreach (var v in a.G.OuterScopeReads()) read.Add(v);
        }
        return g.Nodes.Where(n => !n.Outputs.Any(read.Contains)).ToList();
    }

    /// <summary>
    /// The order ORT's default execution plan runs <paramref name="g"/>'s nodes in (GraphViewer: Graph::ReverseDFSFrom the
    /// leaf nodes with NodeCompare, emitting each node when it is left), taking the node list's positions as ORT's node
    /// indices: a stack seeded with the leaves in index order (the last leaf is searched first); a node's input nodes
    /// are pushed in ascending index order (the highest-index producer is searched first). ORT's graph optimizers
    /// renumber the nodes they fuse, so on an optimized session this is an approximation.
    /// </summary>
    public static List<Node> ExecutionOrder(Graph g)
    {
        var producers = g.Producers();
        var index = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < g.Nodes.Count; i++) index[g.Nodes[i]] = i;
        var inputsOf = new List<Node>[g.Nodes.Count];
        var hasOutputEdge = new bool[g.Nodes.Count];
        for (int i = 0; i < g.Nodes.Count; i++)
        {
            var n = g.Nodes[i];
            var reads = n.Inputs.Where(v => v.Length > 0).ToList();
            foreach (var a in n.Attributes.Values) if (a.G != null) reads.AddRange(a.G.OuterScopeReads());
            var ins = new List<Node>();
            foreach (var v in reads)
                if (producers.TryGetValue(v, out var p) && !ins.Contains(p)) { ins.Add(p); hasOutputEdge[index[p]] = true; }
            ins.Sort((a, b) => index[a].CompareTo(index[b]));
            inputsOf[i] = ins;
        }
        var order = new List<Node>(g.Nodes.Count);
        var visited = new bool[g.Nodes.Count];
        var stack = new Stack<(int Node, bool Leave)>();
        for (int i = 0; i < g.Nodes.Count; i++) if (!hasOutputEdge[i]) stack.Push((i, false));
        while (stack.Count > 0)
        {
            var (n, leave) = stack.Pop();
            if (leave) { order.Add(g.Nodes[n]); continue; }
            if (visited[n]) continue;
            visited[n] = true;
            stack.Push((n, true));
            foreach (var p in inputsOf[n]) if (!visited[index[p]]) stack.Push((index[p], false));
        }
        return order;
    }
}
