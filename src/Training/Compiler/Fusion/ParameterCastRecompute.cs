using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Fusion;

/// <summary>
/// Casts of parameters (and of frozen weights) are recomputed in the backward instead of being kept from the forward.
/// Under a mixed policy every weight is cast to 16 bits at its use, and the product's gradient with respect to its input
/// reads that 16-bit copy (dX = dY · W), so differentiated node by node the copies of all layers stay resident from the
/// forward to each layer's backward: ViT-B/16, 86 M parameters, 158 MiB in bfloat16 at the step's peak (PyTorch's autocast
/// keeps them too, in its cast cache). Casting again costs one pass over the parameters per step, a fraction of a percent
/// of a ViT's step; the copy then lives only around its backward reader.
/// </summary>
public static class ParameterCastRecompute
{
    /// <summary>Recomputes, in <paramref name="g"/>'s backward, the casts of its inputs and initializers. Returns how many.</summary>
    public static int Apply(Graph g, IReadOnlySet<Node> forward, long opset)
    {
        var inputs = g.Inputs.Select(i => i.Name).ToHashSet();
        var outputs = g.Outputs.Select(o => o.Name).ToHashSet();
        var recompute = new BackwardRecompute(g, forward, opset);
        foreach (var cast in g.Nodes.Where(n => forward.Contains(n) && n.OpType == "Cast" && n.Domain == "" && n.Inputs.Count == 1).ToList())
            if ((inputs.Contains(cast.Input(0)) || g.Initializers.ContainsKey(cast.Input(0))) && Elements(g, cast.Input(0)) >= MinElements
                && !outputs.Contains(cast.Output(0)) && recompute.ReadByBackward(cast))
                recompute.Add([cast]);
        return recompute.Apply();
    }

    /// <summary>Smaller casts (scalars, biases of small layers) are left alone: they hold next to nothing.</summary>
    const long MinElements = 4096;

    static long Elements(Graph g, string v) => g.TypeOf(v) is { IsStatic: true } t ? t.StaticDims().Aggregate(1L, (a, d) => a * d) : 0;
}
