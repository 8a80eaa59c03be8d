using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Scheduling;

namespace OrtFinetune.Training.Compiler.Optimizers;

/// <summary>
/// Gradients that exist only from their first write to the optimizer step. A training model without accumulation
/// inputs has one gradient output per parameter; this pass replaces those of each optimizer bucket with one flat output,
/// <c>&lt;bucket&gt;_grad</c> (the members' gradients flattened and concatenated at their offsets, zeros in the
/// alignment gaps), which is exactly the bucketed optimizer model's gradient input. A runtime then lets ORT allocate the
/// gradients during the training run and hands them straight to the optimizer run (see Runtime.Trainer): no gradient
/// memory is held between steps or during the forward, and a bucket's members live only until their concatenation,
/// which the depth-first execution order places right after the bucket's last gradient. PyTorch's
/// <c>zero_grad(set_to_none=True)</c> frees its gradients the same way.
/// </summary>
public static class GradientBuckets
{
    public static void Apply(Model training, IReadOnlyList<OptimizerBucket> buckets)
    {
        var g = training.Graph;
        if (g.Inputs.Any(i => i.Name == TrainingArtifacts.LazyResetGrad))
            throw new CompileException("gradient buckets need a training model without gradient accumulation (its gradients are kept in place instead)");
        if (buckets.Count == 0) return;
        OrtNodeOrder.RestoreIntendedOrder(g);
        var producers = g.Producers();
        var outputs = g.Outputs.ToDictionary(o => o.Name);
        var flat = "gradient_buckets/flat_shape";
        g.Initializers[flat] = Tensor.Int64(flat, [-1], 1);
        int firstGradOutput = g.Outputs.Count;
        var bucketOutputs = new List<ValueInfo>();
        foreach (var b in buckets)
        {
            var parts = new List<string>();
            long at = 0;
            foreach (var m in b.Members.OrderBy(m => m.Offset))
            {
                var grad = TrainingArtifacts.GradName(m.Param);
                if (!outputs.TryGetValue(grad, out var output) || !producers.TryGetValue(grad, out var producer))
                    throw new CompileException($"bucket '{b.Name}': the training model has no gradient output '{grad}'");
                if (output.Type.ElemType != b.Type)
                    throw new CompileException($"bucket '{b.Name}' is {b.Type}, gradient '{grad}' is {output.Type.ElemType}");
                if (m.Offset > at) parts.Add(Zeros(g, b, m.Offset - at));
                var reshape = new Node("Reshape", [grad, flat], [grad + "/flat"], grad + "/flatten");
                int p = g.Nodes.IndexOf(producer) + 1;
                g.Nodes.Insert(p, reshape);
                parts.Add(reshape.Outputs[0]);
                at = m.Offset + m.Count;
                firstGradOutput = Math.Min(firstGradOutput, g.Outputs.IndexOf(output));
                g.Outputs.Remove(output);
            }
            if (b.Elements > at) parts.Add(Zeros(g, b, b.Elements - at));
            var name = b.Name + "_grad";
            var concat = new Node("Concat", parts, [name], b.Name + "/gradients").Set(NodeAttribute.Of("axis", 0L));
            g.Nodes.Insert(g.Nodes.FindLastIndex(n => n.Outputs.Any(o => parts.Contains(o))) + 1, concat);
            bucketOutputs.Add(new ValueInfo(name, new TensorType(b.Type, [new Dim(b.Elements)])));
        }
        g.Outputs.InsertRange(Math.Min(firstGradOutput, g.Outputs.Count), bucketOutputs);
        training.Metadata[OptimizerBucket.MetadataKey] = OptimizerBucket.ToJson(buckets);
        OrtNodeOrder.ForDepthFirstExecution(g);
    }

    static string Zeros(Graph g, OptimizerBucket b, long count)
    {
        var name = $"{b.Name}/gap_{g.Initializers.Count}";
        g.Initializers[name] = Tensor.OfType(name, b.Type, new double[count], count);
        return name;
    }
}
