using System.Globalization;
using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Scheduling;

/// <summary>
/// Predicts the peak memory of a training run from the graphs the compiler emits, before any session exists:
/// persistent state (weights, gradients, optimizer moments: the optimizer graph's inputs) + the activations
/// resident at the training step's peak + the optimizer step's temporaries + the batch, plus a fixed allowance for
/// the runtime itself (<see cref="MemoryEstimate.RuntimeBytes"/>, given by the caller: the process or device
/// context without any tensors).
/// <para>
/// Activations follow ORT's execution order (<see cref="OrtNodeOrder.ExecutionOrder"/>; for a training graph arranged by
/// <see cref="OrtNodeOrder.ForDepthFirstExecution"/>, its node list): a value is resident from its producer to its last consumer; Reshape, Squeeze, Unsqueeze, Flatten and
/// Identity share their input's buffer; graph inputs and outputs are bound buffers, except transient gradients: training
/// outputs the optimizer reads (a training model without accumulation, see Optimizers.GradientBuckets), resident from their
/// producer to the end of the step and through the optimizer step; accumulated gradients are persistent state. Shapes come from shape inference with every symbolic input dimension set to the batch size.
/// ORT's in-place reuse of a dying input and its allocator's rounding are not modelled: on the activation term this
/// is an upper bound without allocator overhead (an arena that keeps freed blocks can need more; see
/// docs/benchmarks.md for how close it comes).
/// </para>
/// </summary>
public static class MemoryModel
{
    static readonly HashSet<string> AliasOps = ["Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"];

    /// <summary>Predicts the peak of a run of <paramref name="training"/> and <paramref name="optimizer"/> at <paramref name="batch"/>.</summary>
    public static MemoryEstimate Predict(Model training, Model? optimizer, long batch, long runtimeBytes = 0)
    {
        var transient = optimizer == null ? new HashSet<string>()
            : training.Graph.Outputs.Select(x => x.Name).Intersect(optimizer.Graph.Inputs.Select(x => x.Name)).ToHashSet();
        var t = Liveness(training, batch, transient);
        var o = optimizer != null ? Liveness(optimizer, batch, new HashSet<string>()) : new Result(0, -1, "", 0, []);
        long gradients = t.TransientBytes;
        long persistent = optimizer != null ? o.InputBytes - gradients : t.InputBytes;
        // The training step's own inputs that are not persistent state (the batch, labels).
        long batchBytes = BatchBytes(training, batch);
        return new MemoryEstimate(persistent, t.PeakBytes, t.PeakAt, t.PeakNode, o.PeakBytes, batchBytes, runtimeBytes, t.TopAtPeak) { TransientGradientBytes = gradients };
    }

    sealed record Result(long PeakBytes, int PeakAt, string PeakNode, long InputBytes, IReadOnlyList<(string Value, long Bytes)> TopAtPeak, long TransientBytes = 0);

    /// <summary>Bytes of <paramref name="model"/>'s inputs that are not persistent state: the forward inputs and labels.</summary>
    static long BatchBytes(Model training, long batch)
    {
        var g = training.Graph;
        long sum = 0;
        foreach (var i in g.Inputs)
            if (i.Type.Shape is { } s && s.Any(d => !d.IsKnown))
                sum += s.Aggregate(1L, (a, d) => a * (d.IsKnown ? d.Value!.Value : batch)) * i.Type.ElemType.SizeOf();
        return sum;
    }

    /// <summary>
    /// A clone of <paramref name="model"/> with every symbolic input dimension set to <paramref name="batch"/> and every
    /// value's type inferred again from those concrete inputs (the model itself is not changed).
    /// </summary>
    public static Model AtBatch(Model model, long batch)
    {
        var m = model.Clone();
        var g = m.Graph;
        for (int i = 0; i < g.Inputs.Count; i++)
        {
            var t = g.Inputs[i].Type;
            if (t.Shape == null || t.Shape.All(d => d.IsKnown)) continue;
            g.Inputs[i] = g.Inputs[i] with { Type = t with { Shape = t.Shape.Select(d => d.IsKnown ? d : new Dim(batch)).ToArray() } };
        }
        // Drop types inferred for the symbolic batch so that inference recomputes them from the concrete inputs.
        g.ValueTypes.Clear();
        ShapeInference.Run(m, new InferenceOptions { UseExistingTypes = false });
        return m;
    }

    /// <param name="liveOutputs">Outputs ORT allocates during the run and that outlive it (transient gradients).</param>
    static Result Liveness(Model model, long batch, IReadOnlySet<string> liveOutputs)
    {
        var g = AtBatch(model, batch).Graph;

        var nodes = OrtNodeOrder.ExecutionOrder(g);
        long Bytes(string v) => g.TypeOf(v) is { IsStatic: true } tt ? tt.StaticDims().Aggregate(1L, (a, d) => a * d) * tt.ElemType.SizeOf() : 0;
        long inputBytes = g.Inputs.Sum(i => Bytes(i.Name));
        var bound = new HashSet<string>(g.Inputs.Select(i => i.Name).Concat(g.Outputs.Select(o => o.Name)).Concat(g.Initializers.Keys));
        bound.ExceptWith(liveOutputs);
        var bufferOf = new Dictionary<string, string>();
        var produced = new Dictionary<string, (int At, long Bytes)>();
        var lastUse = new Dictionary<string, int>();
        for (int i = 0; i < nodes.Count; i++)
        {
            var n = nodes[i];
            foreach (var v in n.Inputs)
                if (v.Length > 0 && bufferOf.TryGetValue(v, out var buf)) lastUse[buf] = i;
            foreach (var a in n.Attributes.Values)
                if (a.G != null) foreach (var v in a.G.OuterScopeReads()) if (bufferOf.TryGetValue(v, out var buf)) lastUse[buf] = i;
            for (int k = 0; k < n.Outputs.Count; k++)
            {
                var o = n.Outputs[k];
                if (o.Length == 0 || bound.Contains(o)) continue;
                if (k == 0 && n.Domain == "" && AliasOps.Contains(n.OpType) && n.Inputs.Count > 0 && bufferOf.TryGetValue(n.Inputs[0], out var src))
                {
                    bufferOf[o] = src;
                    lastUse[src] = i;
                    continue;
                }
                if (n.OpType == "Constant" && n.Domain == "") continue;   // initializers in ORT's plan
                bufferOf[o] = o;
                produced[o] = (i, Bytes(o));
                lastUse[o] = i;
            }
        }
        foreach (var v in liveOutputs) lastUse[bufferOf.GetValueOrDefault(v, v)] = nodes.Count - 1;
        long transientBytes = liveOutputs.Sum(v => produced.TryGetValue(v, out var p) ? p.Bytes : 0);
        var delta = new long[nodes.Count + 1];
        foreach (var (v, (at, bytes)) in produced)
        {
            delta[at] += bytes;
            delta[lastUse[v] + 1] -= bytes;
        }
        long live = 0, peak = 0;
        int peakAt = -1;
        for (int i = 0; i < nodes.Count; i++)
        {
            live += delta[i];
            if (live > peak) { peak = live; peakAt = i; }
        }
        var top = peakAt < 0 ? [] : produced.Where(p => p.Value.At <= peakAt && lastUse[p.Key] >= peakAt)
            .OrderByDescending(p => p.Value.Bytes).Take(10).Select(p => (p.Key, p.Value.Bytes)).ToList();
        return new Result(peak, peakAt, peakAt >= 0 ? nodes[peakAt].Name : "", inputBytes, top, transientBytes);
    }
}

/// <summary>A predicted peak (bytes): <see cref="TotalBytes"/> is what a run needs, the rest says where it goes.</summary>
public sealed record MemoryEstimate(
    long PersistentBytes, long ActivationPeakBytes, int PeakNodeIndex, string PeakNode, long OptimizerTemporaryBytes,
    long BatchBytes, long RuntimeBytes, IReadOnlyList<(string Value, long Bytes)> LargestAtPeak)
{
    /// <summary>Gradients that exist only from the training run to the optimizer run (counted in the activations of the step, and beside the optimizer's temporaries).</summary>
    public long TransientGradientBytes { get; init; }

    /// <summary>The training step and the optimizer step run one after the other: the larger of their temporaries counts.</summary>
    public long TotalBytes => PersistentBytes + Math.Max(ActivationPeakBytes + BatchBytes, TransientGradientBytes + OptimizerTemporaryBytes) + RuntimeBytes;

    static string G(long b) => (b / 1073741824.0).ToString("F1", CultureInfo.InvariantCulture);
    static string M(long b) => (b / 1048576.0).ToString("N0", CultureInfo.InvariantCulture);

    /// <summary>The line a host prints before training starts.</summary>
    public string Summary(string where) =>
        $"will need about {G(TotalBytes)} GiB of {where} memory: persistent state {M(PersistentBytes)} MiB (weights, {(TransientGradientBytes > 0 ? "" : "gradients, ")}optimizer state), " +
        $"activations at the step's peak {M(ActivationPeakBytes)} MiB{(TransientGradientBytes > 0 ? $" (gradients made by then included; all of them: {M(TransientGradientBytes)} MiB)" : "")}, batch {M(BatchBytes)} MiB, optimizer temporaries {M(OptimizerTemporaryBytes)} MiB, runtime {M(RuntimeBytes)} MiB";
}
