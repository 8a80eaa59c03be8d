using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler.Fusion;

/// <summary>
/// The exact (erf) GELU as exporters write it in opsets without a Gelu op (torch.onnx for nn.GELU(),
/// the ViT builder): <c>y = x · (A + erf(x / C)) · H</c> in five nodes, Div (or Mul by a constant),
/// Erf, Add, Mul, Mul, with scalar constants (C = √2, A = 1, H = 0.5 for GELU; the two Muls in any
/// association). Differentiated node by node, that chain keeps three of its intermediates alive from
/// the forward to the backward next to x (x/C, A + erf, and the output for the next layer), each as
/// large as x; its derivative needs only x.
/// <para>
/// <see cref="Fuse"/> replaces each matched chain by one composite node (domain <see cref="Domain"/>)
/// for the duration of autodiff, whose gradient rule (<see cref="Register"/>) recomputes the
/// derivative from x with the chain's own constants:
/// <c>dy/dx = H (A + erf z) + H · x · (2/√π) e^(−z²) · dz/dx</c>, z = x/C (dz/dx = 1/C) or x·C (dz/dx = C).
/// <see cref="Unfuse"/> then puts the original nodes back, so the forward computes exactly what the
/// model wrote (same ops, same constants, standard ONNX only) and its intermediates die at once.
/// </para>
/// A chain is matched only when its intermediates have no other consumer and are not graph outputs. A chain computed in
/// fp32 between a Cast of a 16-bit x and a Cast back (how Precision.AutocastPass writes a 16-bit GELU, which also fuses
/// and unfuses chains with this class) is one composite with the casts: its input and output are the 16-bit values.
/// </summary>
public static class ErfGeluFusion
{
    public const string Domain = "ortfinetune.composite";
    public const string OpType = "ErfGelu";

    /// <summary>The composite nodes placed by <see cref="Fuse"/>, with the nodes each one stands for.</summary>
    public sealed class Fused
    {
        internal Dictionary<Node, List<Node>> Originals { get; } = new(ReferenceEqualityComparer.Instance);
        /// <summary>Each composite's input and output names as fused, so that <see cref="Unfuse"/> follows a pass that renamed them.</summary>
        internal Dictionary<Node, (string[] Inputs, string Output)> Ends { get; } = new(ReferenceEqualityComparer.Instance);
        public int Count => Originals.Count;
        public bool Contains(Node composite) => Originals.ContainsKey(composite);
    }

    /// <summary>Replaces every erf-GELU chain of <paramref name="g"/> by a composite node (in place).</summary>
    public static Fused Fuse(Graph g)
    {
        var fused = new Fused();
        var producers = g.Producers();
        var consumers = g.Consumers();
        var outputs = g.Outputs.Select(o => o.Name).ToHashSet();
        foreach (var n in g.Nodes)
            foreach (var a in n.Attributes.Values)
                if (a.G != null) foreach (var v in a.G.OuterScopeReads()) outputs.Add(v);   // read by a subgraph: keep it

        var matches = new List<(Node Composite, List<Node> Chain)>();
        var taken = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        foreach (var erf in g.Nodes.Where(n => n.OpType == "Erf" && n.Domain == "").ToList())
        {
            var m = Match(g, erf, producers, consumers, outputs);
            if (m == null || m.Value.Chain.Any(taken.Contains)) continue;
            foreach (var c in m.Value.Chain) taken.Add(c);
            matches.Add(m.Value);
        }
        if (matches.Count == 0) return fused;
        var first = new Dictionary<Node, Node>(ReferenceEqualityComparer.Instance);
        foreach (var (composite, chain) in matches)
        {
            foreach (var c in chain) first[c] = composite;
            fused.Originals[composite] = chain;
            fused.Ends[composite] = ([.. composite.Inputs], composite.Output(0));
        }
        var placed = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var nodes = new List<Node>(g.Nodes.Count);
        foreach (var n in g.Nodes)
        {
            if (!first.TryGetValue(n, out var composite)) nodes.Add(n);
            else if (placed.Add(composite)) nodes.Add(composite);
        }
        g.Nodes.Clear();
        g.Nodes.AddRange(nodes);
        g.SortTopologically();
        return fused;
    }

    /// <summary>
    /// Puts the original nodes back in place of each composite node of <paramref name="fused"/>; where a pass renamed the
    /// composite's inputs or output since (Precision.AutocastPass casting them), the chain reads and writes the new names.
    /// </summary>
    public static void Unfuse(Graph g, Fused fused)
    {
        for (int i = 0; i < g.Nodes.Count; i++)
            if (fused.Originals.TryGetValue(g.Nodes[i], out var chain))
            {
                var composite = g.Nodes[i];
                var (inputs, output) = fused.Ends[composite];
                foreach (var n in chain)
                {
                    for (int k = 0; k < n.Inputs.Count; k++)
                    {
                        int at = Array.IndexOf(inputs, n.Inputs[k]);
                        if (at >= 0) n.Inputs[k] = composite.Inputs[at];
                    }
                    for (int k = 0; k < n.Outputs.Count; k++) if (n.Outputs[k] == output) n.Outputs[k] = composite.Output(0);
                }
                g.Nodes.RemoveAt(i);
                g.Nodes.InsertRange(i, chain);
                i += chain.Count - 1;
            }
    }

    /// <summary>
    /// The gradient rule of the composite node: inputs (x, C, A, H), attribute scale = "Div" or "Mul".
    /// For 16-bit x the derivative is computed in fp32 and rounded once (as PyTorch's GELU backward
    /// computes half and bfloat16 in float): in bfloat16 the terms A + erf z and x·e^(−z²) lose most of
    /// their 8-bit mantissa, which cost bf16-true several points of accuracy on Fashion-MNIST.
    /// </summary>
    public static void Register(GradientRegistry r) => r.Add(OpType, c =>
    {
        var b = c.B;
        var t = c.ElemType(c.I(0));
        bool low = t is DataType.Float16 or DataType.BFloat16;
        var ct = low ? DataType.Float : t;
        // x and the output gradient have x's type; the constants are x's type, or fp32 where autocast computes a 16-bit
        // x's GELU in float (Precision.AutocastPass).
        string Up(string v) => low ? b.Cast(v, DataType.Float) : v;
        string UpConst(string v) => low && c.ElemType(v) != DataType.Float ? b.Cast(v, DataType.Float) : v;
        var gy = Up(c.GO(0)!);
        var (x, scale, add, half) = (Up(c.I(0)), UpConst(c.I(1)), UpConst(c.I(2)), UpConst(c.I(3)));
        bool div = c.Node.GetString("scale", "Div") == "Div";
        // Written from z alone (x = z·C or z/C), so that x dies at once and at most three tensors of x's size are
        // resident at a time: ORT runs an Add's later-emitted input first, here the e^(−z²) branch, then erf.
        var z = div ? b.Div(x, scale) : b.Mul(x, scale);
        var cdf = b.Add(b.Op("Erf", [z]), add);                                                // A + erf z
        var xOverZ = div ? scale : b.Div(b.Scalar(1, ct), scale);                              // x / z
        var dz = div ? b.Div(b.Scalar(1, ct), scale) : scale;                                  // dz/dx
        var k = b.Mul(b.Mul(dz, xOverZ), b.Scalar(2 / Math.Sqrt(Math.PI), ct));               // scalar
        var pdf = b.Mul(b.Mul(z, b.Op("Exp", [b.Neg(b.Mul(z, z))])), k);                      // x (2/√π) e^(−z²) dz/dx
        var d = b.Mul(b.Add(cdf, pdf), half);                                                 // dy/dx
        var gx = b.Mul(gy, d);
        c.SetGI(0, low ? b.Cast(gx, t) : gx);
    }, inputs: [0], domain: Domain);

    static (Node Composite, List<Node> Chain)? Match(Graph g, Node erf, Dictionary<string, Node> producers,
        Dictionary<string, List<Node>> consumers, HashSet<string> outputs)
    {
        // Intermediate value: produced by one node, read by exactly one node (once), not a graph output.
        Node? Only(string v)
        {
            if (outputs.Contains(v) || !consumers.TryGetValue(v, out var cs) || cs.Count != 1) return null;
            var c = cs[0];
            return c.Inputs.Count(i => i == v) == 1 ? c : null;
        }
        bool IsScalarConst(string v) => ConstantScalar(g, v, producers) != null;
        // For a binary node reading v: its other operand.
        static string? Other(Node n, string v) => n.Inputs.Count != 2 ? null : n.Inputs[0] == v ? n.Inputs[1] : n.Inputs[1] == v ? n.Inputs[0] : null;
        static bool Is(Node n, string op) => n.OpType == op && n.Domain == "" && n.Inputs.Count == 2 && n.Outputs.Count == 1;

        if (erf.Inputs.Count != 1 || erf.Outputs.Count != 1 || !producers.TryGetValue(erf.Input(0), out var scaleNode)) return null;
        string x, scale, scaleOp;
        if (Is(scaleNode, "Div") && IsScalarConst(scaleNode.Inputs[1])) { x = scaleNode.Inputs[0]; scale = scaleNode.Inputs[1]; scaleOp = "Div"; }
        else if (Is(scaleNode, "Mul") && IsScalarConst(scaleNode.Inputs[1])) { x = scaleNode.Inputs[0]; scale = scaleNode.Inputs[1]; scaleOp = "Mul"; }
        else if (Is(scaleNode, "Mul") && IsScalarConst(scaleNode.Inputs[0])) { x = scaleNode.Inputs[1]; scale = scaleNode.Inputs[0]; scaleOp = "Mul"; }
        else return null;
        if (IsScalarConst(x) || Only(scaleNode.Output(0)) != erf) return null;

        if (Only(erf.Output(0)) is not { } addNode || !Is(addNode, "Add") || Other(addNode, erf.Output(0)) is not { } add || !IsScalarConst(add)) return null;
        if (Only(addNode.Output(0)) is not { } m1 || !Is(m1, "Mul")) return null;
        var other = Other(m1, addNode.Output(0))!;
        List<Node> chain;
        string half, y;
        if (other == x)
        {
            // x · (A + erf) then · H
            if (Only(m1.Output(0)) is not { } m2 || !Is(m2, "Mul") || Other(m2, m1.Output(0)) is not { } h || !IsScalarConst(h)) return null;
            (chain, half, y) = ([scaleNode, erf, addNode, m1, m2], h, m2.Output(0));
        }
        else if (IsScalarConst(other))
        {
            // (A + erf) · H then · x
            if (Only(m1.Output(0)) is not { } m2 || !Is(m2, "Mul") || Other(m2, m1.Output(0)) != x) return null;
            (chain, half, y) = ([scaleNode, erf, addNode, m1, m2], other, m2.Output(0));
        }
        else if (producers.TryGetValue(other, out var hx) && Is(hx, "Mul") && Other(hx, x) is { } h2 && IsScalarConst(h2) && Only(other) == m1)
        {
            // (x · H) · (A + erf)
            (chain, half, y) = ([hx, scaleNode, erf, addNode, m1], h2, m1.Output(0));
        }
        else return null;

        // The constants broadcast to x's shape without changing it (scalars; [1] only against rank >= 1).
        int? rank = g.TypeOf(x)?.Shape?.Length;
        foreach (var cst in new[] { scale, add, half })
            if (ConstantScalar(g, cst, producers) is not { } t || (t.Dims.Length > 0 && (rank == null || rank < t.Dims.Length))) return null;

        var name = chain[^1].Name.Length > 0 ? chain[^1].Name + "/erf_gelu" : "";
        // Computed in float for a 16-bit x (as Precision.AutocastPass writes it): Cast(x -> fp32), the chain, Cast back to
        // x's type. The casts belong to the composite, whose input and output are then the 16-bit values: the backward
        // keeps the 16-bit x and computes the derivative in fp32 from it.
        if (producers.TryGetValue(x, out var widen) && IsCast(widen, DataType.Float) && !outputs.Contains(x)
            && g.TypeOf(widen.Input(0))?.ElemType is DataType.Float16 or DataType.BFloat16
            && consumers.TryGetValue(x, out var xs) && xs.All(chain.Contains)
            && Only(y) is { } narrow && IsCast(narrow, g.TypeOf(widen.Input(0))!.ElemType))
        {
            chain = [widen, .. chain, narrow];
            (x, y) = (widen.Input(0), narrow.Output(0));
        }

        var composite = new Node(OpType, [x, scale, add, half], [y], name, Domain)
            .Set(NodeAttribute.Of("scale", scaleOp));
        return (composite, chain);
    }

    static bool IsCast(Node n, DataType to) => n.OpType == "Cast" && n.Domain == "" && n.Inputs.Count == 1 && n.GetInt("to", 0) == (long)to;

    /// <summary>A one-element float constant (initializer or Constant node), or null.</summary>
    static Tensor? ConstantScalar(Graph g, string v, Dictionary<string, Node> producers) =>
        GradientContext.ConstantValue(g, v, producers) is { ElementCount: 1 } t && t.Type.IsFloat() ? t : null;
}
