using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Fusion;

/// <summary>
/// Attention probabilities are recomputed in the backward instead of being saved from the forward.
/// <para>
/// Scaled dot-product attention as exporters write it, <c>P = Softmax(MatMul(q, kᵀ) [· or / scalar] [Cast], axis -1)</c>
/// followed by <c>MatMul(P [Cast], v)</c>, differentiated node by node keeps P (batch x heads x S x S per layer, the
/// largest activation of a ViT: ViT-B/16 at batch 8 holds 12 x 14.9 MiB in fp32) from the forward until the backward
/// of its layer: the Softmax rule reads P, and the product's rule reads P (or its 16-bit cast) for dV = Pᵀ·dO.
/// q and kᵀ are saved anyway (the first product's gradient reads them), so P costs one more product per layer to
/// recompute (ViT-B/16: +0.7% of a step's FLOPs).
/// </para>
/// <see cref="Apply"/> runs after autodiff: for every forward Softmax whose input chain reaches a MatMul through
/// scalar scalings and Casts only, it clones that chain (a Transpose that makes an operand for the MatMul alone, the
/// MatMul, scalings, Casts, Softmax, and the Casts of P the backward reads) into the backward, just before the first backward node that reads P, and points the backward's
/// reads of P (and of its Casts) at the clones. The forward keeps its own nodes and P dies in the forward, after
/// the product with v. The backward computes exactly what it computed before (same ops on the same inputs), so
/// gradients are unchanged; ORT's CommonSubexpressionElimination, which would merge the clones with their forward
/// twins, is off in training sessions (<c>Device.TrainingDisabledOptimizers</c>).
/// </summary>
public static class AttentionRecompute
{
    /// <summary>
    /// Recomputes attention probabilities in the backward of <paramref name="g"/> (in place). <paramref name="forward"/>:
    /// the nodes of the graph before autodiff (every other node is backward). Returns how many were recomputed.
    /// </summary>
    public static int Apply(Graph g, IReadOnlySet<Node> forward, long opset)
    {
        var producers = g.Producers();
        var consumers = g.Consumers();
        var outputs = g.Outputs.Select(o => o.Name).ToHashSet();
        var recompute = new BackwardRecompute(g, forward, opset);

        foreach (var softmax in g.Nodes.Where(n => forward.Contains(n) && n.OpType == "Softmax" && n.Domain == "" && n.Inputs.Count == 1).ToList())
        {
            if (g.Initializers.ContainsKey(softmax.Input(0)) || outputs.Contains(softmax.Output(0))) continue;
            // The chain from the product to the Softmax: Casts and scalings by a constant, each read only by the next.
            var chain = new List<Node> { softmax };
            var at = softmax;
            bool ok = true;
            while (true)
            {
                if (!producers.TryGetValue(at.Input(0), out var p) || !forward.Contains(p) || outputs.Contains(p.Output(0))) { ok = false; break; }
                if (consumers[p.Output(0)].Any(c => c != at && forward.Contains(c))) { ok = false; break; }
                if (p.OpType == "MatMul" && p.Domain == "") { chain.Insert(0, p); break; }
                bool scaling = p.OpType is "Mul" or "Div" && p.Domain == "" && p.Inputs.Count == 2 && IsConstant(g, producers, p.Input(1));
                bool cast = p.OpType == "Cast" && p.Domain == "";
                if (!scaling && !cast || chain.Count > 4) { ok = false; break; }
                chain.Insert(0, p);
                at = p;
            }
            if (!ok) continue;
            // A transposed operand made for this product alone (kᵀ) is recomputed too: the backward then keeps its source,
            // which it reads anyway once ORT folds the product gradient's transpose back into it (else both are kept).
            foreach (var operand in chain[0].Inputs.Distinct().ToList())
                if (producers.TryGetValue(operand, out var t) && t.OpType == "Transpose" && t.Domain == "" && forward.Contains(t)
                    && !outputs.Contains(operand) && consumers[operand].All(c => c == chain[0] || !forward.Contains(c)))
                    chain.Insert(0, t);
            // The probabilities and their forward Casts (mixed precision: P in 16-bit for the product with v).
            var probs = new List<Node>();
            foreach (var c in consumers.GetValueOrDefault(softmax.Output(0)) ?? [])
                if (forward.Contains(c) && c.OpType == "Cast" && c.Domain == "" && !outputs.Contains(c.Output(0))) probs.Add(c);
            var read = chain.Concat(probs).Where(recompute.ReadByBackward).ToList();
            if (!read.Contains(softmax) && !probs.Any(read.Contains)) continue;   // P is not saved: nothing to recompute
            recompute.Add(chain.Concat(probs.Where(read.Contains)).ToList());
        }
        return recompute.Apply();
    }

    static bool IsConstant(Graph g, Dictionary<string, Node> producers, string v) =>
        g.Initializers.ContainsKey(v) || producers.TryGetValue(v, out var p) && p.OpType == "Constant" && p.Domain == "";
}
