using System.Text.Json;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Optimizers;

namespace OrtFinetune.Training.Compiler.Artifacts;

/// <summary>Writes compiled training artifacts into a folder (see docs/artifacts.md, which is the contract).</summary>
public static class ArtifactWriter
{
    public const string TrainingModelFile = "training_model.onnx";
    public const string EvalModelFile = "eval_model.onnx";
    public const string ParametersFile = "initial_parameters.onnx";
    public const string OptimizerModelFile = "optimizer_model.onnx";
    public const string ManifestFile = "artifacts.json";
    public const string Format = "ortfinetune-artifacts/1";

    /// <summary>
    /// Writes the models and <c>artifacts.json</c>. <paramref name="optimizerOptions"/>, when given, are the options
    /// <paramref name="optimizer"/> was built with: the manifest then records its hyperparameters and each
    /// parameter's weight-decay group.
    /// </summary>
    public static void Write(TrainingArtifacts a, string folder, string sourceModel, Model? optimizer = null, OptimizerOptions? optimizerOptions = null)
    {
        Directory.CreateDirectory(folder);
        if (optimizer != null) ModelIO.Save(optimizer, Path.Combine(folder, OptimizerModelFile));
        ModelIO.Save(a.TrainingModel, Path.Combine(folder, TrainingModelFile));
        ModelIO.Save(a.EvalModel, Path.Combine(folder, EvalModelFile));
        ModelIO.Save(InitialParameters(a), Path.Combine(folder, ParametersFile));
        var manifest = Manifest(a, sourceModel, optimizer, optimizerOptions);
        var tmp = Path.Combine(folder, ManifestFile + ".tmp");
        File.WriteAllText(tmp, JsonSerializer.Serialize(manifest, new JsonSerializerOptions { WriteIndented = true }));
        File.Move(tmp, Path.Combine(folder, ManifestFile), true);
    }

    /// <summary>
    /// Initial parameter and buffer values as an ONNX model with no nodes: its initializers, each also a graph
    /// output, so any ONNX tool reads them and any ORT binding gets them by running the model with no inputs.
    /// </summary>
    public static Model InitialParameters(TrainingArtifacts a)
    {
        var init = new Model();
        init.Opsets[""] = a.TrainingModel.OpsetOf("");
        init.Graph.Name = "initial_parameters";
        foreach (var t in a.Parameters.Concat(a.Buffers))
        {
            init.Graph.Initializers[t.Name] = t;
            init.Graph.Outputs.Add(new ValueInfo(t.Name, t.TensorType));
        }
        init.Metadata["ortfinetune.role"] = "parameters";
        return init;
    }

    /// <summary>The content of artifacts.json (see docs/artifacts.md for every field).</summary>
    public static Dictionary<string, object?> Manifest(TrainingArtifacts a, string sourceModel, Model? optimizer, OptimizerOptions? o)
    {
        var buckets = optimizer != null ? OptimizerBucket.Read(optimizer) : [];
        var bucketOf = buckets.SelectMany(b => b.Members.Select(m => (b, m))).ToDictionary(x => x.m.Param);
        string[] states = optimizer == null ? [] : StateSuffixes(optimizer, buckets.Count > 0 ? buckets[0].Name : a.Parameters.FirstOrDefault()?.Name);
        var paramNames = a.Parameters.Select(p => p.Name).ToHashSet();
        var bufferNames = a.Buffers.Select(p => p.Name).ToHashSet();
        var m = new Dictionary<string, object?>
        {
            ["format"] = Format,
            ["source_model"] = Path.GetFullPath(sourceModel),
            ["opset"] = a.TrainingModel.OpsetOf(""),
            ["training_model"] = TrainingModelFile,
            ["eval_model"] = EvalModelFile,
            ["initial_parameters"] = ParametersFile,
            ["optimizer_model"] = optimizer != null ? OptimizerModelFile : null,
            ["optimizer"] = optimizer?.Metadata.GetValueOrDefault("ortfinetune.optimizer"),
            ["gradient_accumulation"] = a.HasAccumulation,
            ["loss_scaling"] = a.HasLossScale,
            ["inputs"] = a.ForwardInputs.Select(Describe).ToList(),
            ["outputs"] = a.ForwardOutputs.Select(Describe).ToList(),
            ["labels"] = a.Labels,
            ["loss"] = TrainingArtifacts.LossOutput,
            ["parameters"] = a.Parameters.Select(p => new Dictionary<string, object?>
            {
                ["name"] = p.Name, ["dtype"] = p.Type.OnnxName(), ["shape"] = p.Dims, ["elements"] = p.ElementCount,
                ["gradient"] = TrainingArtifacts.GradName(p.Name),
                ["accumulation_buffer"] = a.HasAccumulation ? TrainingArtifacts.AccumulationBuffer(p.Name) : null,
                ["weight_decay"] = bucketOf.TryGetValue(p.Name, out var at) ? at.b.Decays : o?.Decays(p),
                ["lr_multiplier"] = bucketOf.TryGetValue(p.Name, out at) ? at.b.LrMultiplier : o?.LrMultiplier(p.Name),
                ["body"] = bucketOf.TryGetValue(p.Name, out at) ? at.b.Body : o?.IsBody(p.Name),
                ["bucket"] = bucketOf.TryGetValue(p.Name, out at) ? at.b.Name : null,
                ["offset"] = bucketOf.TryGetValue(p.Name, out at) ? at.m.Offset : null,
            }).ToList(),
            ["buffers"] = a.Buffers.Select(p => new { name = p.Name, dtype = p.Type.OnnxName(), shape = p.Dims, updated = TrainingArtifacts.UpdatedName(p.Name) }).ToList(),
            ["frozen_parameters"] = a.FrozenParameters,
        };
        if (optimizer != null)
        {
            m["optimizer_layout"] = buckets.Count > 0 ? "buckets" : "per-parameter";
            m["optimizer_state"] = states;
            if (o != null)
                m["optimizer_settings"] = new Dictionary<string, object?>
                {
                    ["type"] = o.Type, ["weight_decay"] = o.WeightDecay, ["momentum"] = o.Momentum, ["dampening"] = o.Dampening, ["nesterov"] = o.Nesterov,
                    ["beta1"] = o.Beta1, ["beta2"] = o.Beta2, ["eps"] = o.Eps, ["max_grad_norm"] = o.MaxGradNorm,
                    ["no_decay"] = o.NoDecay, ["skip_non_finite_updates"] = o.SkipNonFiniteUpdates,
                    ["rounding"] = o.Rounding.ToString().ToLowerInvariant(), ["bucket_bytes"] = buckets.Count > 0 ? o.BucketBytes : 0,
                    ["head_parameters"] = o.HeadParameters?.ToList(),
                };
            m["optimizer_buckets"] = buckets.Select(b => new Dictionary<string, object?>
            {
                ["name"] = b.Name, ["dtype"] = b.Type.OnnxName(), ["weight_decay"] = b.Decays, ["lr_multiplier"] = b.LrMultiplier, ["body"] = b.Body, ["elements"] = b.Elements,
                ["element_bytes"] = b.Type.SizeOf(), ["alignment_bytes"] = OptimizerBucket.AlignmentBytes,
                ["parameters_input"] = b.Name, ["gradients_input"] = TrainingArtifacts.GradName(b.Name),
                ["state_inputs"] = states.ToDictionary(s => s, s => OptimizerBuilder.StateName(b.Name, s)),
                ["members"] = b.Members.Select(x => new Dictionary<string, object?>
                {
                    ["parameter"] = x.Param, ["offset"] = x.Offset, ["elements"] = x.Count, ["byte_offset"] = x.Offset * b.Type.SizeOf(),
                    ["shape"] = a.Parameters.FirstOrDefault(p => p.Name == x.Param)?.Dims,
                }).ToList(),
            }).ToList();
        }
        m["step_inputs"] = StepInputs(a, optimizer);
        var models = new Dictionary<string, object?>
        {
            ["training"] = Interface(TrainingModelFile, a.TrainingModel, paramNames, bufferNames),
            ["eval"] = Interface(EvalModelFile, a.EvalModel, paramNames, bufferNames),
        };
        if (optimizer != null) models["optimizer"] = Interface(OptimizerModelFile, optimizer, paramNames, bufferNames, buckets.Select(b => b.Name).ToHashSet());
        m["models"] = models;
        return m;
    }

    /// <summary>The optimizer's state suffixes, in input order (read from the graph: the options are not needed).</summary>
    static string[] StateSuffixes(Model optimizer, string? firstSlot)
    {
        if (firstSlot == null) return [];
        var prefix = firstSlot + ".";
        return optimizer.Graph.Inputs.Where(i => i.Name.StartsWith(prefix, StringComparison.Ordinal)).Select(i => i.Name[prefix.Length..]).ToArray();
    }

    /// <summary>The scalars a host feeds per run (see docs/artifacts.md, "Per-step inputs").</summary>
    static List<Dictionary<string, object?>> StepInputs(TrainingArtifacts a, Model? optimizer)
    {
        var list = new List<Dictionary<string, object?>>();
        void Add(string model, Model g, string name, string meaning)
        {
            var i = g.Graph.Inputs.FirstOrDefault(x => x.Name == name);
            if (i != null) list.Add(new() { ["name"] = name, ["model"] = model, ["dtype"] = i.Type.ElemType.OnnxName(), ["shape"] = Array.Empty<long>(), ["meaning"] = meaning });
        }
        Add("training", a.TrainingModel, TrainingArtifacts.LazyResetGrad, "true: each <p>_grad output is this batch's gradient (the accumulation buffer is ignored); false: accumulation buffer + this batch's gradient");
        Add("training", a.TrainingModel, TrainingArtifacts.LossScaleInput, "backward is seeded with this value: every gradient is multiplied by it (dynamic loss scaling)");
        if (optimizer != null)
        {
            Add("optimizer", optimizer, OptimizerBuilder.LearningRate, "the learning rate of this update");
            Add("optimizer", optimizer, OptimizerBuilder.Step, "1-based number of this update (bias correction; SGD momentum starts at step 1); advance it only when all_finite is true");
            Add("optimizer", optimizer, OptimizerBuilder.GradScale, "gradients are divided by it before anything else: the loss scale, else 1");
            Add("optimizer", optimizer, OptimizerBuilder.BodyStep, "head-only warm-up: 0 leaves the body parameters (body: true) and their state unchanged; else the 1-based number of this update of the body (its bias correction and momentum start)");
        }
        return list;
    }

    /// <summary>A model's inputs and outputs in order, each with its role and, for outputs, the input it may alias.</summary>
    static Dictionary<string, object?> Interface(string file, Model model, HashSet<string> parameters, HashSet<string> buffers, HashSet<string>? buckets = null)
    {
        var g = model.Graph;
        var inputNames = g.Inputs.Select(i => i.Name).ToHashSet();
        string InputRole(string n) => n switch
        {
            TrainingArtifacts.LazyResetGrad or TrainingArtifacts.LossScaleInput or OptimizerBuilder.LearningRate or OptimizerBuilder.Step or OptimizerBuilder.GradScale or OptimizerBuilder.BodyStep => "step_scalar",
            "labels" => "labels",
            _ when parameters.Contains(n) => "parameter",
            _ when buffers.Contains(n) => "buffer",
            _ when buckets?.Contains(n) == true => "bucket_parameters",
            _ when n.EndsWith("_grad.accumulation.buffer", StringComparison.Ordinal) => "accumulation_buffer",
            _ when n.EndsWith("_grad", StringComparison.Ordinal) && (parameters.Contains(n[..^5]) || buckets?.Contains(n[..^5]) == true) => "gradient",
            _ when buckets != null && n.Contains('.') => "optimizer_state",
            _ => "input",
        };
        string OutputRole(string n) => n switch
        {
            TrainingArtifacts.LossOutput => "loss",
            TrainingArtifacts.Top1 or TrainingArtifacts.Top5 => "metric",
            OptimizerBuilder.AllFinite or OptimizerBuilder.GradNorm => "status",
            _ when n.EndsWith(".probe", StringComparison.Ordinal) => "probe",
            _ when buckets == null && n.EndsWith("_grad", StringComparison.Ordinal) && parameters.Contains(n[..^5]) => "gradient",
            _ when buckets == null && n.EndsWith("_updated", StringComparison.Ordinal) && buffers.Contains(n[..^8]) => "buffer_updated",
            _ when buckets != null && n.EndsWith(".updated", StringComparison.Ordinal) => "updated",
            _ => "output",
        };
        string? Alias(string n)
        {
            string? a = buckets != null && n.EndsWith(".updated", StringComparison.Ordinal) ? n[..^8]
                : n.EndsWith("_updated", StringComparison.Ordinal) ? n[..^8]
                : n.EndsWith("_grad", StringComparison.Ordinal) ? TrainingArtifacts.AccumulationBuffer(n[..^5]) : null;
            return a != null && inputNames.Contains(a) ? a : null;
        }
        return new Dictionary<string, object?>
        {
            ["file"] = file,
            ["inputs"] = g.Inputs.Select(i => new Dictionary<string, object?> { ["name"] = i.Name, ["role"] = InputRole(i.Name), ["dtype"] = i.Type.ElemType.OnnxName(), ["shape"] = Shape(i.Type) }).ToList(),
            ["outputs"] = g.Outputs.Select(o => new Dictionary<string, object?> { ["name"] = o.Name, ["role"] = OutputRole(o.Name), ["dtype"] = o.Type.ElemType.OnnxName(), ["shape"] = Shape(o.Type), ["in_place_of"] = Alias(o.Name) }).ToList(),
        };
    }

    /// <summary>Dimensions as numbers, symbolic ones as their name (or "?").</summary>
    static object?[]? Shape(TensorType t) => t.Shape?.Select(d => d.Value is long v ? (object)v : d.Symbol ?? "?").ToArray();

    static object Describe(ValueInfo v) => new { name = v.Name, dtype = v.Type.ElemType.OnnxName(), shape = v.Type.Shape?.Select(d => d.ToString()) };
}
