using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Precision;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler.Optimizers;

/// <summary>Optimizer hyperparameters, with torch.optim's names and defaults.</summary>
public sealed record OptimizerOptions
{
    /// <summary>"sgd", "adam" or "adamw".</summary>
    public string Type { get; init; } = "adamw";
    public double Momentum { get; init; }
    public double Dampening { get; init; }
    public bool Nesterov { get; init; }
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    /// <summary>L2 penalty (SGD, Adam) or decoupled decay (AdamW).</summary>
    public double WeightDecay { get; init; } = 0.01;
    /// <summary>
    /// Leave every tensor unchanged when a gradient is not finite (GradScaler's skipped step). Needed with
    /// loss scaling; without it a non-finite gradient is only reported through all_finite (the caller
    /// stops), which saves one select per parameter, gradient and moment per step.
    /// </summary>
    public bool SkipNonFiniteUpdates { get; init; } = true;
    /// <summary>Clip gradients to this global L2 norm (torch.nn.utils.clip_grad_norm_); null = no clipping.</summary>
    public double? MaxGradNorm { get; init; }
    /// <summary>Glob patterns of parameters without weight decay. Null = biases and norm weights (parameters with fewer than 2 dimensions).</summary>
    public IReadOnlyList<string>? NoDecay { get; init; }
    /// <summary>How updates are stored: rounded to nearest, or Kahan-compensated (one extra state tensor per parameter, in its dtype).</summary>
    public Abstractions.UpdateRounding Rounding { get; init; } = Abstractions.UpdateRounding.Nearest;
    /// <summary>
    /// Parameters of one dtype and weight-decay setting are updated together, as flat buckets of up to this
    /// many bytes counted in fp32 (torch.optim's "foreach" idea): a few dozen kernels per step instead of a dozen per
    /// parameter, which is what a GPU step of a large model is bound by. 0 = one update chain per parameter.
    /// </summary>
    public long BucketBytes { get; init; } = OptimizerBuilder.DefaultBucketBytes;
    /// <summary>
    /// Per-parameter learning-rate multipliers (parameter name -> factor, finite and > 0): a parameter is updated with
    /// <c>learning_rate</c> x its multiplier, everywhere the learning rate enters (torch.optim param groups whose lr is
    /// the schedule's value times a scale, as in BEiT/MAE layer-wise decay: <see cref="Abstractions.LayerDecay"/>).
    /// The multipliers are constants of the graph; the scheduler still drives the one <c>learning_rate</c> input.
    /// Null, or a name missing from it, means 1.
    /// </summary>
    public IReadOnlyDictionary<string, double>? LrMultipliers { get; init; }
    /// <summary>
    /// Head-only warm-up: the names of the head parameters. When set, the graph takes one more input,
    /// <see cref="OptimizerBuilder.BodyStep"/>, and every other parameter (the body) is updated only when it is
    /// above 0, with it as the body's step count (Adam's bias corrections, SGD momentum's first step); at 0 the
    /// body's parameters and optimizer state pass through unchanged and its gradients count neither in the
    /// gradient norm (clipping) nor in all_finite: as if the body were frozen (requires_grad = False in PyTorch,
    /// where a parameter without a gradient keeps its state and starts its step count when it first gets one).
    /// Head and body parameters never share a bucket. Null: no warm-up input.
    /// </summary>
    public IReadOnlyCollection<string>? HeadParameters { get; init; }

    /// <summary>The learning-rate multiplier of parameter <paramref name="name"/> (1 unless <see cref="LrMultipliers"/> says otherwise).</summary>
    public double LrMultiplier(string name) => LrMultipliers != null && LrMultipliers.TryGetValue(name, out var m) ? m : 1.0;

    /// <summary>Whether <paramref name="name"/> is a body parameter, gated by <see cref="OptimizerBuilder.BodyStep"/> (only with <see cref="HeadParameters"/>).</summary>
    public bool IsBody(string name) => HeadParameters != null && !HeadParameters.Contains(name);

    public void Validate()
    {
        if (Type is not ("sgd" or "adam" or "adamw")) throw new CompileException($"optimizer '{Type}' is not supported (supported: sgd, adam, adamw)");
        if (Momentum < 0) throw new CompileException($"momentum {Momentum} must be >= 0");
        if (Nesterov && (Momentum <= 0 || Dampening != 0)) throw new CompileException("nesterov momentum requires momentum > 0 and dampening 0");
        if (Beta1 is < 0 or >= 1 || Beta2 is < 0 or >= 1) throw new CompileException($"betas ({Beta1}, {Beta2}) must be in [0, 1)");
        if (Eps <= 0) throw new CompileException($"eps {Eps} must be > 0");
        if (WeightDecay < 0) throw new CompileException($"weight decay {WeightDecay} must be >= 0");
        if (MaxGradNorm is <= 0) throw new CompileException($"max gradient norm {MaxGradNorm} must be > 0");
        if (BucketBytes < 0) throw new CompileException($"bucket size {BucketBytes} bytes must be >= 0");
        if (LrMultipliers?.FirstOrDefault(kv => !(kv.Value > 0) || double.IsInfinity(kv.Value)) is { Key: not null } bad)
            throw new CompileException($"the learning-rate multiplier of '{bad.Key}' is {bad.Value}; it must be finite and > 0");
    }

    public bool Decays(Tensor p) => WeightDecay > 0 && (NoDecay == null
        ? p.Dims.Length >= 2
        : !NoDecay.Any(g => TrainingCompiler.Glob(g).IsMatch(p.Name)));

    /// <summary>
    /// State tensors kept per parameter of this storage dtype, as name suffixes. Adam's second moment of a float16
    /// parameter is kept as its square root (<see cref="OptimizerBuilder.SecondMomentRoot"/>): fp16 cannot hold
    /// squared gradients (below 6e-8 they flush to zero and the update explodes), their square roots it can.
    /// </summary>
    public string[] StateSuffixes(DataType storage) => [.. Type switch
    {
        "sgd" => Momentum > 0 ? new[] { "momentum_buffer" } : [],
        _ => new[] { "exp_avg", storage == DataType.Float16 ? OptimizerBuilder.SecondMomentRoot : OptimizerBuilder.SecondMoment },
    }, .. Rounding == Abstractions.UpdateRounding.Kahan ? new[] { OptimizerBuilder.KahanSuffix } : []];
}

/// <summary>One parameter's place in a bucket: elements [Offset, Offset + Count) of the flat buffers.</summary>
public sealed record BucketMember(string Param, long Offset, long Count);

/// <summary>
/// Parameters updated as one flat tensor: the optimizer graph's inputs are the bucket's flat buffers
/// (<c>Name</c>, <c>Name_grad</c>, <c>Name.exp_avg</c>, ...), and the runtime keeps each member's
/// parameter, gradient and state as a view into them. Gaps between members (alignment) hold zeros,
/// which every optimizer leaves at zero. <paramref name="LrMultiplier"/>: the members' learning rate is
/// learning_rate times it (<see cref="OptimizerOptions.LrMultipliers"/>); <paramref name="Body"/>: the bucket
/// holds body parameters, updated only when the body_step input is above 0 (<see cref="OptimizerOptions.HeadParameters"/>).
/// </summary>
public sealed record OptimizerBucket(string Name, DataType Type, bool Decays, long Elements, IReadOnlyList<BucketMember> Members, double LrMultiplier = 1, bool Body = false)
{
    /// <summary>Member offsets are multiples of this many bytes (CUDA's allocation alignment).</summary>
    public const int AlignmentBytes = 256;

    /// <summary>A bucket's members lie within this many consecutive parameters of the interface order.</summary>
    public const int Window = 16;

    /// <summary>
    /// Groups parameters by (dtype, weight decay, learning-rate multiplier, body or head) in their order and fills
    /// buckets up to <paramref name="maxBytes"/> counted in fp32 (the update's compute type; a larger parameter gets
    /// a bucket of its own), so that every bucket has one update rule. A bucket also closes before a member that lies
    /// <see cref="Window"/> or more parameters after its first one: the backward makes a bucket's gradients close together,
    /// so that gradients flattened into their buckets in the training graph (Optimizers.GradientBuckets) need not wait for
    /// the end of the backward (one bucket of every model's biases and norms would keep each layer's output gradients alive).
    /// </summary>
    public static List<OptimizerBucket> Plan(IReadOnlyList<Tensor> parameters, OptimizerOptions o, long maxBytes)
    {
        var buckets = new List<OptimizerBucket>();
        var position = parameters.Select((p, i) => (p.Name, i)).ToDictionary(x => x.Name, x => x.i);
        foreach (var group in parameters.GroupBy(p => (p.Type, Decays: o.Decays(p), Lr: o.LrMultiplier(p.Name), Body: o.IsBody(p.Name))))
        {
            var members = new List<BucketMember>();
            long size = 0;
            long align = Math.Max(1, AlignmentBytes / group.Key.Type.SizeOf());
            void Close()
            {
                if (members.Count == 0) return;
                buckets.Add(new OptimizerBucket($"optimizer_bucket_{buckets.Count}", group.Key.Type, group.Key.Decays, size, members, group.Key.Lr, group.Key.Body));
                members = new List<BucketMember>();
                size = 0;
            }
            foreach (var p in group)
            {
                long n = p.ElementCount;
                // The cap counts fp32 bytes: 16-bit parameters are updated in fp32 temporaries too.
                if (members.Count > 0 && ((size + n) * Math.Max(4, group.Key.Type.SizeOf()) > maxBytes || position[p.Name] - position[members[0].Param] >= Window)) Close();
                members.Add(new BucketMember(p.Name, size, n));
                size += (n + align - 1) / align * align;
            }
            Close();
        }
        return buckets;
    }

    public const string MetadataKey = "ortfinetune.optimizer_buckets";

    static readonly System.Text.Json.JsonSerializerOptions Json = new() { PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Type: the ONNX TensorProto data type number. LrMultiplier and Body are absent in models written before them (1, false).</summary>
    sealed record Dto(string Name, int Type, bool Decays, long Elements, List<BucketMember> Members, double? LrMultiplier = null, bool? Body = null);

    public static string ToJson(IEnumerable<OptimizerBucket> buckets) =>
        System.Text.Json.JsonSerializer.Serialize(buckets.Select(b => new Dto(b.Name, (int)b.Type, b.Decays, b.Elements, b.Members.ToList(), b.LrMultiplier, b.Body)), Json);

    /// <summary>The buckets an optimizer model updates; empty for a per-parameter optimizer model.</summary>
    public static IReadOnlyList<OptimizerBucket> Read(Model optimizer)
    {
        if (!optimizer.Metadata.TryGetValue(MetadataKey, out var text)) return [];
        try
        {
            var dtos = System.Text.Json.JsonSerializer.Deserialize<List<Dto>>(text, Json) ?? [];
            var buckets = dtos.Select(d => new OptimizerBucket(d.Name, (DataType)d.Type, d.Decays, d.Elements, d.Members, d.LrMultiplier ?? 1, d.Body ?? false)).ToList();
            foreach (var b in buckets)
            {
                if (!((DataType)b.Type).IsFloat() || b.Elements <= 0 || b.Members.Any(x => x.Offset < 0 || x.Count <= 0 || x.Offset + x.Count > b.Elements)
                    || !(b.LrMultiplier > 0) || double.IsInfinity(b.LrMultiplier))
                    throw new CompileException($"the optimizer model's bucket '{b.Name}' is not valid (type {b.Type}, {b.Elements} elements)");
            }
            return buckets;
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or NotSupportedException or ArgumentException)
        {
            throw new CompileException($"the optimizer model's '{MetadataKey}' metadata is not valid ({e.Message})");
        }
    }
}

/// <summary>
/// Emits the optimizer step as an ONNX graph (optimizer_model.onnx), with torch.optim semantics.
/// Inputs: learning_rate (float), step (int64, the 1-based number of this update), grad_scale (float,
/// gradients are divided by it: the loss scale of 16-mixed, else 1), with a head-only warm-up
/// (<see cref="OptimizerOptions.HeadParameters"/>) body_step (int64: the body's 1-based update count, 0 = leave
/// the body as it is), then per parameter p: p, p_grad,
/// then per parameter its state tensors (p.exp_avg, p.exp_avg_sq (p.exp_avg_sq_sqrt for float16) or p.momentum_buffer).
/// Outputs: all_finite (bool), grad_norm (float, global L2 norm of the unscaled gradients before
/// clipping), then p.updated per parameter, then each state's .updated. When a gradient is not finite
/// every output equals its input (the update is skipped, as GradScaler does). Each .updated output is
/// written by the last node that reads the corresponding input, so it may alias the input buffer. A parameter's
/// learning rate is learning_rate times its multiplier (<see cref="OptimizerOptions.LrMultipliers"/>), a constant of the graph.
/// </summary>
public static class OptimizerBuilder
{
    public const string LearningRate = "learning_rate", Step = "step", GradScale = "grad_scale", AllFinite = "all_finite", GradNorm = "grad_norm";
    /// <summary>Head-only warm-up's input (int64 scalar): the body's 1-based update count, or 0 to leave the body unchanged (see <see cref="OptimizerOptions.HeadParameters"/>).</summary>
    public const string BodyStep = "body_step";
    public static string Updated(string name) => name + ".updated";
    public static string StateName(string param, string suffix) => $"{param}.{suffix}";
    /// <summary>State suffix of the Kahan compensation buffer (the rounding error of the last stored update).</summary>
    public const string KahanSuffix = "kahan_comp";
    /// <summary>Adam's second moment (torch.optim's exp_avg_sq), and its square root, which float16 parameters keep instead.</summary>
    public const string SecondMoment = "exp_avg_sq", SecondMomentRoot = "exp_avg_sq_sqrt";

    /// <summary>
    /// Builds the optimizer graph. 16-bit parameters and states are stored in their dtype but updated in
    /// fp32 (read, cast up, computed, rounded once at the store). With <paramref name="kernels"/>, 16-bit
    /// nodes the provider lacks are wrapped in fp32 casts.
    /// </summary>
    public static Model Build(IReadOnlyList<Tensor> parameters, OptimizerOptions o, long opset = 17, IKernelAvailability? kernels = null)
    {
        o.Validate();
        if (o.HeadParameters != null && parameters.Count > 0 && !parameters.Any(p => o.HeadParameters.Contains(p.Name)))
            throw new CompileException($"head-only warm-up: none of the trainable parameters is a head parameter ({string.Join(", ", o.HeadParameters.Take(4))})");
        Model m;
        if (o.BucketBytes > 0 && parameters.Count > 0)
        {
            var buckets = OptimizerBucket.Plan(parameters, o, o.BucketBytes);
            m = BuildGraph(buckets.Select(b => new Slot(b.Name, b.Type, new TensorType(b.Type, [new Dim(b.Elements)]), b.Decays, b.LrMultiplier, b.Body)).ToList(), o, opset);
            m.Metadata[OptimizerBucket.MetadataKey] = OptimizerBucket.ToJson(buckets);
        }
        else m = BuildGraph(parameters.Select(p => new Slot(p.Name, p.Type, p.TensorType, o.Decays(p), o.LrMultiplier(p.Name), o.IsBody(p.Name))).ToList(), o, opset);
        if (kernels != null) KernelFallback.Apply(m, kernels);
        return m;
    }

    /// <summary>What the graph updates: a parameter, or a bucket of them as one flat tensor; its learning-rate multiplier, and whether body_step gates it.</summary>
    sealed record Slot(string Name, DataType Type, TensorType TensorType, bool Decays, double LrMultiplier, bool Body);

    public const long DefaultBucketBytes = 64L << 20;

    /// <summary>
    /// Bucket size for a device. A bucket's update keeps a few fp32 temporaries of its size alive at once,
    /// on top of the persistent state. On CUDA, where each node costs a kernel launch, 64 MiB; on the CPU,
    /// where a node costs microseconds but those temporaries add to the peak resident set (mostly in the
    /// 16-bit true policies, whose activations are small), 4 MiB.
    /// </summary>
    public static long DefaultBucketBytesFor(bool cuda) => cuda ? DefaultBucketBytes : 4L << 20;

    static Model BuildGraph(IReadOnlyList<Slot> parameters, OptimizerOptions o, long opset)
    {
        o.Validate();
        var m = new Model();
        m.Opsets[""] = Math.Max(opset, 13);
        var g = m.Graph;
        g.Name = "optimizer";
        var b = new GraphBuilder(g, m.OpsetOf(""));
        var F = DataType.Float;
        g.Inputs.Add(new ValueInfo(LearningRate, new TensorType(F, [])));
        g.Inputs.Add(new ValueInfo(Step, new TensorType(DataType.Int64, [])));
        g.Inputs.Add(new ValueInfo(GradScale, new TensorType(F, [])));
        if (o.HeadParameters != null) g.Inputs.Add(new ValueInfo(BodyStep, new TensorType(DataType.Int64, [])));
        foreach (var p in parameters)
        {
            g.Inputs.Add(new ValueInfo(p.Name, p.TensorType));
            g.Inputs.Add(new ValueInfo(p.Name + "_grad", p.TensorType));
        }
        foreach (var p in parameters)
            foreach (var s in o.StateSuffixes(p.Type)) g.Inputs.Add(new ValueInfo(StateName(p.Name, s), p.TensorType));

        // Global gradient norm (fp32), finite flag, and the one scalar every gradient is multiplied by. In a head-only
        // step (body_step 0) the body's gradients are left out, as PyTorch's clip_grad_norm_ sees no gradient of a frozen parameter.
        string SumSquare(Slot p) => b.Op("ReduceSumSquare", [AsFloat(b, p.Name + "_grad", p.Type)], NodeAttribute.Of("keepdims", 0L));
        var sq = parameters.Where(p => !p.Body).Select(SumSquare).ToList();
        string? bodyOn = null;
        if (parameters.Any(p => p.Body))
        {
            bodyOn = b.Op("Greater", [BodyStep, b.IntScalar(0)]);
            sq.Add(b.Where(bodyOn, b.Sum(parameters.Where(p => p.Body).Select(SumSquare).ToList()), b.Scalar(0, F)));
        }
        var norm = b.Div(b.Op("Sqrt", [b.Sum(sq)]), GradScale);
        var finite = b.Op("Not", [b.Op("Or", [b.Op("IsNaN", [norm]), b.Op("IsInf", [norm])])]);
        var factor = b.Div(b.Scalar(1, F), GradScale);
        if (o.MaxGradNorm is double maxNorm)
        {
            var coef = b.Div(b.Scalar(maxNorm, F), b.Add(norm, b.Scalar(1e-6, F)));
            factor = b.Mul(factor, b.Op("Min", [coef, b.Scalar(1, F)]));
        }
        // What gates each update: the finite flag (when asked for), and for the body also body_step > 0.
        string? headGate = o.SkipNonFiniteUpdates ? finite : null;
        string? bodyGate = bodyOn == null ? null : o.SkipNonFiniteUpdates ? b.Op("And", [finite, bodyOn]) : bodyOn;
        // Scalar arithmetic in float64 (as torch.optim does in Python, where a param group's lr is the scheduled lr times
        // its scale), rounded to the parameter dtype at use; one set per (step input, learning-rate multiplier).
        var D = DataType.Double;
        var lrD = b.Cast(LearningRate, D);
        var outputs = new List<(string Name, string Value, TensorType Type)>();
        var stateOutputs = new List<(string Name, string Value, TensorType Type)>();
        var scalars = new Dictionary<(bool Body, double Lr), StepScalars>();
        foreach (var key in parameters.Select(p => (p.Body, p.LrMultiplier)).Distinct())
        {
            var stepInput = key.Body ? BodyStep : Step;
            var t = b.Cast(stepInput, D);
            var lrKeyD = key.LrMultiplier == 1 ? lrD : b.Mul(lrD, b.Scalar(key.LrMultiplier, D));
            var firstStep = b.Op("Equal", [stepInput, b.IntScalar(1)]);
            string? stepSizeD = null, bc2SqrtD = null, decayFactorD = null;
            if (o.Type != "sgd")
            {
                var bc1 = b.Sub(b.Scalar(1, D), b.Op("Pow", [b.Scalar(o.Beta1, D), t]));
                bc2SqrtD = b.Op("Sqrt", [b.Sub(b.Scalar(1, D), b.Op("Pow", [b.Scalar(o.Beta2, D), t]))]);
                stepSizeD = b.Div(lrKeyD, bc1);
            }
            if (o.Type == "adamw") decayFactorD = b.Sub(b.Scalar(1, D), b.Mul(lrKeyD, b.Scalar(o.WeightDecay, D)));
            scalars[key] = new StepScalars(key.LrMultiplier == 1 ? null : lrKeyD, firstStep, stepSizeD, bc2SqrtD, decayFactorD);
        }
        foreach (var p in parameters)
        {
            var (lrScaledD, firstStep, stepSizeD, bc2SqrtD, decayFactorD) = scalars[(p.Body, p.LrMultiplier)];
            var dt = p.Type;
            b.Prefix = p.Name + "/optim";
            bool half = dt is DataType.Float16 or DataType.BFloat16;
            var ct = half ? F : dt;
            string S(double v) => b.Scalar(v, ct);
            string Conv(string scalarF) => ct == F ? scalarF : b.Cast(scalarF, ct);
            string FromD(string scalarD) => b.Cast(scalarD, ct);
            string In(string v) => half ? b.Cast(v, F) : v;
            string Out(string v) => half ? b.Cast(v, dt) : v;
            var pIn = In(p.Name);
            var lr = lrScaledD == null ? Conv(LearningRate) : FromD(lrScaledD);
            var grad = b.Mul(In(p.Name + "_grad"), Conv(factor));
            bool decay = p.Decays;
            string newP;
            var newStates = new List<(string Input, string Value)>();
            if (o.Type == "sgd")
            {
                if (decay) grad = b.Add(grad, b.Mul(pIn, S(o.WeightDecay)));
                if (o.Momentum > 0)
                {
                    var buf = StateName(p.Name, "momentum_buffer");
                    var running = b.Add(b.Mul(In(buf), S(o.Momentum)), o.Dampening == 0 ? grad : b.Mul(grad, S(1 - o.Dampening)));
                    var newBuf = b.Where(firstStep, grad, running);
                    newStates.Add((buf, Out(newBuf)));
                    grad = o.Nesterov ? b.Add(grad, b.Mul(newBuf, S(o.Momentum))) : newBuf;
                }
                newP = b.Sub(pIn, b.Mul(grad, lr));
            }
            else
            {
                if (decay && o.Type == "adam") grad = b.Add(grad, b.Mul(pIn, S(o.WeightDecay)));
                var m1 = StateName(p.Name, "exp_avg");
                bool rms = dt == DataType.Float16;   // the second moment kept as its square root (see OptimizerOptions.StateSuffixes)
                var m2 = StateName(p.Name, rms ? SecondMomentRoot : SecondMoment);
                var newM1 = b.Add(b.Mul(In(m1), S(o.Beta1)), b.Mul(grad, S(1 - o.Beta1)));
                var m2In = rms ? b.Mul(In(m2), In(m2)) : In(m2);
                var newM2 = b.Add(b.Mul(m2In, S(o.Beta2)), b.Mul(b.Mul(grad, grad), S(1 - o.Beta2)));
                newStates.Add((m1, Out(newM1)));
                newStates.Add((m2, Out(rms ? b.Op("Sqrt", [newM2]) : newM2)));
                var denom = b.Add(b.Div(b.Op("Sqrt", [newM2]), FromD(bc2SqrtD!)), S(o.Eps));
                var stepSize = FromD(stepSizeD!);
                var start = pIn;
                if (decay && o.Type == "adamw")
                    start = b.Mul(pIn, FromD(decayFactorD!));
                newP = b.Sub(start, b.Mul(stepSize, b.Div(newM1, denom)));
            }
            if (o.Rounding == Abstractions.UpdateRounding.Kahan)
            {
                // Compensated store: add back what the last rounding lost, round once, keep the new loss.
                var comp = StateName(p.Name, KahanSuffix);
                var exact = b.Add(pIn, b.Add(b.Sub(newP, pIn), In(comp)));
                var stored = Out(exact);
                newStates.Add((comp, Out(b.Sub(exact, In(stored)))));
                newP = stored;
            }
            else newP = Out(newP);
            outputs.Add((Updated(p.Name), newP, p.TensorType));
            foreach (var (input, value) in newStates) stateOutputs.Add((Updated(input), value, p.TensorType));
            // Skip the update when a gradient is not finite, or for the body in a head-only step (outputs = inputs).
            // Emitted right after this parameter's update, so its new values are written and freed before the next parameter's.
            var gate = p.Body ? bodyGate : headGate;
            foreach (var (input, value) in newStates.Prepend((p.Name, newP)))
            {
                if (gate != null) g.Nodes.Add(new Node("Where", [gate, value, input], [Updated(input)], b.Unique(p.Body ? "skip_unless_body_step" : "skip_if_not_finite")));
                else Precision.AutocastPass.Rename(g, value, Updated(input));
            }
        }
        b.Prefix = "";
        g.Outputs.Add(new ValueInfo(AllFinite, new TensorType(DataType.Bool, [])));
        g.Outputs.Add(new ValueInfo(GradNorm, new TensorType(F, [])));
        g.Nodes.Add(new Node("Identity", [finite], [AllFinite], b.Unique("Identity")));
        g.Nodes.Add(new Node("Identity", [norm], [GradNorm], b.Unique("Identity")));
        foreach (var (name, _, type) in outputs.Concat(stateOutputs)) g.Outputs.Add(new ValueInfo(name, type));
        m.Metadata["ortfinetune.role"] = "optimizer";
        m.Metadata["ortfinetune.optimizer"] = o.Type;
        return m;
    }

    /// <summary>The float64 scalars of one (step input, learning-rate multiplier): the scaled learning rate (null for multiplier 1), step == 1, Adam's step size, bias correction and AdamW's decay factor.</summary>
    sealed record StepScalars(string? LrScaledD, string FirstStep, string? StepSizeD, string? Bc2SqrtD, string? DecayFactorD);

    static string AsFloat(GraphBuilder b, string v, DataType t) => t == DataType.Float ? v : b.Cast(v, DataType.Float);
}
