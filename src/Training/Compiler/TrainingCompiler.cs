using System.Diagnostics;
using System.Text.RegularExpressions;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;
using OrtFinetune.Training.Compiler.Losses;
using OrtFinetune.Training.Compiler.Precision;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler;

public sealed record CompileOptions
{
    public LossOptions Loss { get; init; } = new();
    /// <summary>Forward output used as logits; default: the first output.</summary>
    public string? LogitsOutput { get; init; }
    /// <summary>Glob patterns ('*' and '?'); when given, only matching parameters are trained.</summary>
    public IReadOnlyList<string> Trainable { get; init; } = [];
    /// <summary>Glob patterns of parameters to keep frozen (they stay initializers).</summary>
    public IReadOnlyList<string> Freeze { get; init; } = [];
    /// <summary>Name of the labels input of the training and eval models.</summary>
    public string LabelsInput { get; init; } = "labels";
    /// <summary>
    /// Add in-graph gradient accumulation (as ORT's training artifacts had): inputs lazy_reset_grad and
    /// &lt;param&gt;_grad.accumulation.buffer; each &lt;param&gt;_grad output is reset ? g : buffer + g, so it can
    /// be written into the buffer it reads (one gradient buffer per parameter).
    /// </summary>
    public bool GradientAccumulation { get; init; }
    /// <summary>Add top1_correct / top5_correct (int64 counts) outputs for (N, C) logits.</summary>
    public bool Metrics { get; init; } = true;
    /// <summary>Precision policy: rewrites the forward graph before autodiff; with loss scaling the training model takes a loss_scale input. Null = the model as written.</summary>
    public Abstractions.IPrecisionPolicy? Precision { get; init; }
    /// <summary>Kernels of the target provider: 16-bit nodes it lacks run in fp32 (wrapped in casts). Null = not checked.</summary>
    public IKernelAvailability? Kernels { get; init; }
    /// <summary>
    /// Attention probabilities (Softmax of a product) are recomputed in the backward from the product's inputs instead of
    /// being kept from the forward (see Fusion.AttentionRecompute). On by default.
    /// </summary>
    public bool RecomputeAttention { get; init; } = true;
    /// <summary>
    /// Casts of parameters (mixed policies: the 16-bit weight copies) are cast again in the backward instead of being kept
    /// from the forward (see Fusion.ParameterCastRecompute). On by default.
    /// </summary>
    public bool RecomputeParameterCasts { get; init; } = true;
    /// <summary>
    /// With <see cref="Kernels"/> and a mixed policy: autocast's 16-bit ops stay 16-bit in the graph where the provider
    /// lacks the kernel, computed in fp32 between casts by the kernel fallback, so that the activations kept for the
    /// backward are 16-bit as autocast keeps them (CPU: about half the activation memory, at the cost of the casts).
    /// Off by default.
    /// </summary>
    public bool LowPrecisionActivations { get; init; }
}

/// <summary>What <see cref="TrainingCompiler.Compile"/> produces. See docs/artifacts.md for the contract.</summary>
public sealed class TrainingArtifacts
{
    public required Model TrainingModel { get; init; }
    public required Model EvalModel { get; init; }
    /// <summary>Trainable parameters, in interface order, with their initial values.</summary>
    public required IReadOnlyList<Tensor> Parameters { get; init; }
    /// <summary>State buffers updated by the training step (BatchNorm running statistics), with initial values.</summary>
    public required IReadOnlyList<Tensor> Buffers { get; init; }
    public required IReadOnlyList<ValueInfo> ForwardInputs { get; init; }
    public required IReadOnlyList<ValueInfo> ForwardOutputs { get; init; }
    public required string Labels { get; init; }
    public IReadOnlyList<string> FrozenParameters { get; init; } = [];
    public TimeSpan CompileTime { get; init; }

    public const string LossOutput = "loss";
    public const string LazyResetGrad = "lazy_reset_grad";
    public const string Top1 = "top1_correct", Top5 = "top5_correct";
    public static string AccumulationBuffer(string param) => param + "_grad.accumulation.buffer";
    public bool HasAccumulation { get; init; }
    public bool HasMetrics { get; init; }
    /// <summary>The float scalar input the loss gradient is seeded with (dynamic loss scaling); present with a scaling precision policy.</summary>
    public const string LossScaleInput = "loss_scale";
    public bool HasLossScale { get; init; }
    public string? Precision { get; init; }
    public static string GradName(string param) => param + "_grad";
    public static string UpdatedName(string buffer) => buffer + "_updated";
}

/// <summary>
/// Forward ONNX model -> training and eval models: loss, reverse-mode gradients and state outputs,
/// all as standard ONNX operators. Pure: no I/O.
/// </summary>
public static class TrainingCompiler
{
    public const long MinOpset = 13;

    public static TrainingArtifacts Compile(Model forward, CompileOptions? options = null, GradientRegistry? registry = null)
    {
        options ??= new CompileOptions();
        options.Loss.Validate();
        var sw = Stopwatch.StartNew();
        // Precision (issue 5): the policy rewrites a copy of the forward model before anything else.
        if (options.Precision != null)
        {
            forward = forward.Clone();
            options.Precision.ConvertForward(forward, new PrecisionPasses(options.Kernels, options.LowPrecisionActivations && options.Kernels != null));
        }
        long opset = forward.OpsetOf("");
        if (opset < MinOpset)
            throw new CompileException($"the model uses ai.onnx opset {opset}; training needs opset {MinOpset} or newer (re-export it, e.g. torch.onnx.export(..., opset_version=17))");
        var fg = forward.Graph;
        if (fg.Outputs.Count == 0) throw new CompileException("the model has no outputs");
        var logits = options.LogitsOutput ?? fg.Outputs[0].Name;
        if (fg.Outputs.All(o => o.Name != logits))
            throw new CompileException($"the model has no output '{logits}' (outputs: {string.Join(", ", fg.Outputs.Select(o => o.Name))})");
        if (fg.Inputs.Any(i => i.Name == options.LabelsInput) || fg.Initializers.ContainsKey(options.LabelsInput))
            throw new CompileException($"the model already has a value named '{options.LabelsInput}'; choose another labels input name");

        // Training graph: forward + loss.
        var train = forward.Clone();
        var g = train.Graph;
        g.SortTopologically();
        ShapeInference.Infer(train);
        var lt = g.TypeOf(logits);
        if (lt == null || !lt.ElemType.IsFloat() || lt.Shape is not { Length: >= 2 })
            throw new CompileException($"output '{logits}' must be floating-point logits of shape (N, C, ...); it is {lt?.ToString() ?? "of unknown type"}");
        var labelsType = new TensorType(DataType.Int64, lt.Shape.Take(1).Concat(lt.Shape.Skip(2)).ToArray());
        g.Inputs.Add(new ValueInfo(options.LabelsInput, labelsType));
        var b = new GraphBuilder(g, opset);
        b.Reserve(TrainingArtifacts.LossOutput);
        LossBuilder.CrossEntropy(b, logits, options.LabelsInput, lt, options.Loss, TrainingArtifacts.LossOutput);
        ShapeInference.Infer(train);

        // Parameters: float initializers whose gradient reaches the loss, filtered by the user's patterns.
        var candidates = fg.Initializers.Values.Where(t => t.Type.IsFloat() && !t.Name.StartsWith("onnx::", StringComparison.Ordinal)).Select(t => t.Name).ToList();
        var reaching = Autodiff.Autodiff.ReachingLoss(g, TrainingArtifacts.LossOutput, candidates, registry);
        var trainableRx = options.Trainable.Select(Glob).ToList();
        var freezeRx = options.Freeze.Select(Glob).ToList();
        var parameters = candidates.Where(reaching.Contains)
            .Where(p => trainableRx.Count == 0 || trainableRx.Any(r => r.IsMatch(p)))
            .Where(p => !freezeRx.Any(r => r.IsMatch(p))).ToList();
        foreach (var pat in options.Trainable)
            if (!candidates.Any(p => Glob(pat).IsMatch(p)))
                throw new CompileException($"--trainable pattern '{pat}' matches no parameter of the model");
        if (parameters.Count == 0) throw new CompileException("no trainable parameters: every parameter is frozen or does not affect the loss");
        var frozen = candidates.Where(reaching.Contains).Except(parameters).ToList();

        // State buffers: BatchNormalization running statistics in training mode.
        var buffers = new List<(string Name, string Updated, Node Node, int Slot)>();
        foreach (var n in g.Nodes.Where(n => n.OpType == "BatchNormalization" && n.Domain == "" && n.GetInt("training_mode", 0) == 1))
            for (int slot = 3; slot <= 4; slot++)
                if (g.Initializers.ContainsKey(n.Input(slot)) && buffers.All(x => x.Name != n.Input(slot)))
                    buffers.Add((n.Input(slot), TrainingArtifacts.UpdatedName(n.Input(slot)), n, slot - 2));

        var paramTensors = parameters.Select(p => g.Initializers[p]).ToList();
        var bufferTensors = buffers.Select(x => g.Initializers[x.Name]).ToList();
        foreach (var p in parameters) g.Initializers.Remove(p);
        foreach (var x in buffers) g.Initializers.Remove(x.Name);
        g.Inputs.AddRange(paramTensors.Concat(bufferTensors).Select(t => new ValueInfo(t.Name, t.TensorType)));

        var forwardOutputs = fg.Outputs.Select(o => new ValueInfo(o.Name, g.TypeOf(o.Name) ?? o.Type)).ToList();
        var forwardInputs = fg.Inputs.Select(i => new ValueInfo(i.Name, g.TypeOf(i.Name) ?? i.Type)).ToList();

        string? seed = null;
        if (options.Precision?.LossScaling != null)
        {
            b.Reserve(TrainingArtifacts.LossScaleInput);
            g.Inputs.Add(new ValueInfo(TrainingArtifacts.LossScaleInput, new TensorType(DataType.Float, [])));
            var lossT = g.TypeOf(TrainingArtifacts.LossOutput)!.ElemType;
            seed = lossT == DataType.Float ? TrainingArtifacts.LossScaleInput : b.Cast(TrainingArtifacts.LossScaleInput, lossT);
        }
        // Composite patterns whose gradient needs fewer forward values than their nodes' rules would keep
        // (erf GELU: x alone): fused for autodiff only, the forward keeps the model's own nodes.
        var forwardNodes = new HashSet<Node>(g.Nodes, ReferenceEqualityComparer.Instance);
        var gelus = (registry ?? GradientRegistry.Default).Find(Fusion.ErfGeluFusion.Domain, Fusion.ErfGeluFusion.OpType) != null
            ? Fusion.ErfGeluFusion.Fuse(g) : new Fusion.ErfGeluFusion.Fused();
        var grads = Autodiff.Autodiff.Differentiate(g, opset, TrainingArtifacts.LossOutput, parameters, registry, seed);
        Fusion.ErfGeluFusion.Unfuse(g, gelus);
        if (options.RecomputeAttention) Fusion.AttentionRecompute.Apply(g, forwardNodes, opset);
        if (options.RecomputeParameterCasts) Fusion.ParameterCastRecompute.Apply(g, forwardNodes, opset);
        var accInputs = new List<ValueInfo>();
        if (options.GradientAccumulation)
        {
            b.Prefix = "";
            accInputs.Add(new ValueInfo(TrainingArtifacts.LazyResetGrad, new TensorType(DataType.Bool, [])));
            for (int i = 0; i < parameters.Count; i++)
            {
                var fresh = b.Unique(grads[i] + "/this_step");
                var producer = g.Producers()[grads[i]];
                producer.Outputs[producer.Outputs.IndexOf(grads[i])] = fresh;
                var buffer = TrainingArtifacts.AccumulationBuffer(parameters[i]);
                accInputs.Add(new ValueInfo(buffer, paramTensors[i].TensorType));
                // Placed right after the node producing this step's gradient (ORT runs it as soon as its inputs
                // are there, see Scheduling.OrtNodeOrder), so the fresh gradient is folded into the buffer and
                // freed at once instead of every parameter's fresh gradient staying alive until the end of backward.
                int at = g.Nodes.IndexOf(producer) + 1;
                var add = new Node("Add", [buffer, fresh], [b.Unique(grads[i] + "/sum")], b.Unique("accumulate/Add"));
                var where = new Node("Where", [TrainingArtifacts.LazyResetGrad, fresh, add.Outputs[0]], [grads[i]], b.Unique("accumulate"));
                g.Nodes.InsertRange(at, [add, where]);
            }
        }
        var metricOutputs = options.Metrics ? AddMetrics(b, logits, options.LabelsInput, lt) : [];

        // Interface: inputs = forward inputs, labels, parameters, buffers; outputs = loss, forward outputs, grads, updated buffers.
        g.Inputs.Clear();
        g.Inputs.AddRange(forwardInputs);
        g.Inputs.Add(new ValueInfo(options.LabelsInput, labelsType));
        g.Inputs.AddRange(paramTensors.Select(t => new ValueInfo(t.Name, t.TensorType)));
        g.Inputs.AddRange(bufferTensors.Select(t => new ValueInfo(t.Name, t.TensorType)));
        g.Inputs.AddRange(accInputs);
        if (seed != null) g.Inputs.Add(new ValueInfo(TrainingArtifacts.LossScaleInput, new TensorType(DataType.Float, [])));
        g.Outputs.Clear();
        g.Outputs.Add(new ValueInfo(TrainingArtifacts.LossOutput, g.TypeOf(TrainingArtifacts.LossOutput)!));
        g.Outputs.AddRange(forwardOutputs);
        for (int i = 0; i < parameters.Count; i++)
        {
            if (grads[i] != TrainingArtifacts.GradName(parameters[i]))
                throw new CompileException($"the name '{TrainingArtifacts.GradName(parameters[i])}' is already used in the model; rename that value");
            g.Outputs.Add(new ValueInfo(grads[i], paramTensors[i].TensorType));
        }
        foreach (var (name, updated, node, outSlot) in buffers)
        {
            while (node.Outputs.Count <= outSlot) node.Outputs.Add("");
            if (node.Outputs[outSlot].Length == 0) node.Outputs[outSlot] = updated;
            else if (node.Outputs[outSlot] != updated) g.Nodes.Add(new Node("Identity", [node.Outputs[outSlot]], [updated], b.Unique("Identity")));
            g.Outputs.Add(new ValueInfo(updated, g.Initializers.GetValueOrDefault(name)?.TensorType ?? bufferTensors.First(t => t.Name == name).TensorType));
        }
        g.Outputs.AddRange(metricOutputs);
        g.RemoveDeadNodes();
        g.SortTopologically();
        g.Name = "training";
        train.Metadata["ortfinetune.role"] = "training";
        train.Metadata["ortfinetune.parameters"] = string.Join("\n", parameters);
        train.Metadata["ortfinetune.buffers"] = string.Join("\n", buffers.Select(x => x.Name));

        var eval = BuildEval(forward, options, opset, logits, labelsType, lt, paramTensors, bufferTensors);
        if (options.Kernels != null)
        {
            KernelFallback.Apply(train, options.Kernels);
            KernelFallback.Apply(eval, options.Kernels);
        }
        // Last: ORT runs a graph depth-first from its leaves, not in file order (see OrtNodeOrder).
        Scheduling.OrtNodeOrder.ForDepthFirstExecution(train.Graph);
        if (options.Precision != null) train.Metadata["ortfinetune.precision"] = eval.Metadata["ortfinetune.precision"] = options.Precision.Name;
        return new TrainingArtifacts
        {
            HasLossScale = seed != null, Precision = options.Precision?.Name,
            TrainingModel = train, EvalModel = eval, Parameters = paramTensors, Buffers = bufferTensors,
            ForwardInputs = forwardInputs, ForwardOutputs = forwardOutputs, Labels = options.LabelsInput,
            FrozenParameters = frozen, CompileTime = sw.Elapsed,
            HasAccumulation = options.GradientAccumulation, HasMetrics = metricOutputs.Count > 0,
        };
    }

    /// <summary>Eval model: the forward graph in inference mode (BatchNorm uses running stats, Dropout off) plus the loss.</summary>
    static Model BuildEval(Model forward, CompileOptions o, long opset, string logits, TensorType labelsType, TensorType lt,
        IReadOnlyList<Tensor> parameters, IReadOnlyList<Tensor> buffers)
    {
        var eval = forward.Clone();
        var g = eval.Graph;
        foreach (var n in g.Nodes.ToList())
        {
            if (n.Domain != "") continue;
            if (n.OpType == "BatchNormalization")
            {
                n.Attributes.Remove("training_mode");
                while (n.Outputs.Count > 1) n.Outputs.RemoveAt(n.Outputs.Count - 1);
            }
            else if (n.OpType == "Dropout")
            {
                while (n.Inputs.Count > 2) n.Inputs.RemoveAt(n.Inputs.Count - 1);
                while (n.Outputs.Count > 1) n.Outputs.RemoveAt(n.Outputs.Count - 1);
            }
        }
        g.SortTopologically();
        ShapeInference.Infer(eval);
        g.Inputs.Add(new ValueInfo(o.LabelsInput, labelsType));
        var b = new GraphBuilder(g, opset);
        b.Reserve(TrainingArtifacts.LossOutput);
        LossBuilder.CrossEntropy(b, logits, o.LabelsInput, lt, o.Loss, TrainingArtifacts.LossOutput);
        foreach (var p in parameters) g.Initializers.Remove(p.Name);
        foreach (var p in buffers) g.Initializers.Remove(p.Name);
        var outputs = g.Outputs.ToList();
        g.Inputs.AddRange(parameters.Select(t => new ValueInfo(t.Name, t.TensorType)));
        g.Inputs.AddRange(buffers.Select(t => new ValueInfo(t.Name, t.TensorType)));
        g.Outputs.Clear();
        g.Outputs.Add(new ValueInfo(TrainingArtifacts.LossOutput, new TensorType(lt.ElemType, [])));
        g.Outputs.AddRange(outputs);
        if (o.Metrics) g.Outputs.AddRange(AddMetrics(b, logits, o.LabelsInput, lt));
        g.RemoveDeadNodes();
        g.Name = "eval";
        eval.Metadata["ortfinetune.role"] = "eval";
        return eval;
    }

    /// <summary>Counts of samples whose label is the top-1 / among the top-5 logits, for (N, C) logits.</summary>
    static List<ValueInfo> AddMetrics(GraphBuilder b, string logits, string labels, TensorType lt)
    {
        if (lt.Shape is not { Length: 2 } || !lt.Shape[1].IsKnown) return [];
        long c = lt.Shape[1].Value!.Value;
        b.Reserve(TrainingArtifacts.Top1); b.Reserve(TrainingArtifacts.Top5);
        var saved = b.Prefix; b.Prefix = "metrics";
        var lab = b.Unsqueeze(labels, 1);
        var top1 = b.Op("ArgMax", [logits], NodeAttribute.Of("axis", 1L), NodeAttribute.Of("keepdims", 1L));
        var hit1 = b.Cast(b.Op("Equal", [top1, lab]), DataType.Int64);
        b.Graph.Nodes.Add(new Node("ReduceSum", [hit1], [TrainingArtifacts.Top1], b.Unique("ReduceSum")).Set(NodeAttribute.Of("keepdims", 0L)));
        var idx = b.Unique("top5_indices");
        var vals = b.Unique("top5_values");
        b.Graph.Nodes.Add(new Node("TopK", [logits, b.Ints(Math.Min(5, c))], [vals, idx], b.Unique("TopK")).Set(NodeAttribute.Of("axis", 1L)));
        var hit5 = b.Cast(b.Op("Equal", [idx, lab]), DataType.Int64);
        b.Graph.Nodes.Add(new Node("ReduceSum", [hit5], [TrainingArtifacts.Top5], b.Unique("ReduceSum")).Set(NodeAttribute.Of("keepdims", 0L)));
        b.Prefix = saved;
        var t = new TensorType(DataType.Int64, []);
        return [new ValueInfo(TrainingArtifacts.Top1, t), new ValueInfo(TrainingArtifacts.Top5, t)];
    }

    /// <summary>A parameter-name glob ('*' any run, '?' one character) as an anchored regex; shared by every pattern option.</summary>
    public static Regex Glob(string pattern) =>
        new("^" + Regex.Escape(pattern).Replace("\\*", ".*").Replace("\\?", ".") + "$", RegexOptions.CultureInvariant);
}
