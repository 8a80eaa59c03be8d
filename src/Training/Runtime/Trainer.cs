using System.Globalization;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler;
using OrtFinetune.Training.Compiler.Artifacts;
using OrtFinetune.Abstractions;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Distributed;

namespace OrtFinetune.Training.Runtime;

public sealed record TrainerOptions
{
    public DeviceSpec Device { get; init; } = DeviceSpec.Cpu;
    /// <summary>Intra-op threads (0 = ORT's default).</summary>
    public int IntraOpThreads { get; init; }
    /// <summary>
    /// ORT's CPU memory arena. Off by default for training: the arena keeps the high-water mark of
    /// every size class, which for a training graph's activations costs far more peak memory than
    /// it saves in allocation time.
    /// </summary>
    public bool CpuMemArena { get; init; }
    /// <summary>
    /// Dynamic loss scaling (GradScaler semantics) for a training model with a loss_scale input; null there
    /// means GradScaler's defaults. The trainer owns the scaler: TrainStep seeds backward with its scale,
    /// OptimizerStep divides by it, skips a non-finite update and updates it, checkpoints carry its state.
    /// </summary>
    public LossScalerSettings? LossScaling { get; init; }
    /// <summary>
    /// Data parallel (torch DDP's semantics): every rank builds the same trainer; rank 0's weights and buffers are
    /// broadcast at construction, and OptimizerStep averages the accumulated gradients over the ranks (each flat
    /// bucket divided by the world size and summed in place, as DDP does) before clipping and the update.
    /// A non-finite gradient on any rank makes the sum non-finite on every rank, so all ranks skip together.
    /// Null or one rank: a single-process trainer.
    /// </summary>
    public Communicator? Communicator { get; init; }
}

public readonly record struct TrainStepResult(float Loss, long Top1Correct);
/// <param name="AllFinite">False when a gradient was inf/NaN: nothing was updated (with a loss scaler the scale backed off).</param>
/// <param name="LossScale">The scale the gradients were divided by (1 without loss scaling).</param>
public readonly record struct OptimizerStepResult(bool AllFinite, float GradNorm, float LossScale);

/// <summary>The per-step scalars the device read in the last runs (only with <see cref="StepInputProbe"/> outputs).</summary>
public readonly record struct StepProbe(bool? LazyResetGrad, float? LossScale, float? LearningRate, long? Step, float? GradScale);
public readonly record struct EvalStepResult(float Loss, long Top1Correct, long Top5Correct);

/// <summary>
/// Runs compiled training artifacts on an execution provider, with the retired ORT training API's
/// shape: TrainStep, LazyResetGrad, OptimizerStep, EvalStep, SetLearningRate, SaveCheckpoint,
/// LoadCheckpoint, ExportModelForInferencing. Parameters, optimizer state and buffers live in device
/// OrtValues bound with IOBinding for the whole run; every updated output is bound to the buffer it
/// replaces (in place), so persistent memory is one buffer per parameter and optimizer moment. Gradients:
/// with a training model that accumulates (lazy_reset_grad and accumulation buffer inputs), one persistent
/// buffer per parameter too; with one that does not, ORT allocates them during the training run, at their
/// first write, and they are handed to the optimizer run and freed after it (PyTorch's
/// zero_grad(set_to_none=True)): then each TrainStep needs its OptimizerStep. Per step only the loss,
/// metrics and the finite flag reach the host.
/// </summary>
public sealed class Trainer : IDisposable
{
    readonly TrainerOptions _o;
    readonly InferenceSession _train, _eval, _optim;
    readonly DeviceValues _dev;
    readonly OrtIoBinding _trainBinding, _evalBinding, _optimBinding;
    readonly RunOptions _run;
    readonly Model _evalModel;
    readonly string[] _forwardInputs;
    readonly string _labels;
    readonly List<(string Name, DataType Type, long[] Shape, OrtValue Value)> _params = new();
    readonly List<OrtValue> _grads = new();
    /// <summary>The optimizer's gradient inputs (per bucket, else per parameter): persistent buffers, or with transient gradients the training run's outputs of the same names.</summary>
    readonly List<(string Name, DataType Type, long Count)> _gradInputs = new();
    /// <summary>The persistent gradient buffers by optimizer input name (empty with transient gradients).</summary>
    readonly Dictionary<string, OrtValue> _persistentGradients = new();
    readonly bool _transientGrads;
    /// <summary>With transient gradients: the last training run's outputs (its gradients among them) until OptimizerStep consumes them.</summary>
    IDisposableReadOnlyCollection<OrtValue>? _stepOutputs;
    Dictionary<string, OrtValue>? _stepGradients;
    readonly OrtValue _released = OrtValue.CreateTensorValueFromMemory(new float[1], []);
    readonly List<(string Name, DataType Type, long[] Shape, OrtValue Value)> _buffers = new();
    readonly List<(string Name, DataType Type, long[] Shape, OrtValue Value)> _states = new();
    readonly List<FlatBucket> _buckets = new();
    readonly StepScalar<bool> _lazyReset;
    readonly StepScalar<float> _lr, _gradScale;
    readonly StepScalar<long> _step;
    readonly StepScalar<long>? _bodyStep;
    readonly StepScalar<float>? _lossScale;
    readonly Dictionary<string, OrtValue> _probes = new();
    readonly OrtValue _loss, _top1, _top5, _evalLoss, _allFinite, _gradNorm;
    readonly bool _metrics;
    readonly List<string> _trainDeviceOutputs = new(), _evalDeviceOutputs = new();
    bool _resetPending = true;

    /// <summary>Number of optimizer updates applied (skipped non-finite steps do not count).</summary>
    public long Step { get; private set; }
    /// <summary>
    /// Head-only warm-up: false makes the next updates head-only (the optimizer model's body parameters and their
    /// state stay as they are; needs an optimizer compiled with <see cref="OptimizerOptions.HeadParameters"/>).
    /// Not saved in checkpoints: the caller decides it (e.g. from the epoch).
    /// </summary>
    public bool UpdateBody { get; set; } = true;
    /// <summary>Number of updates applied to the body parameters (equals <see cref="Step"/> without head-only updates).</summary>
    public long BodyStep { get; private set; }
    public float LearningRate { get; private set; } = 1e-3f;
    public string OptimizerType { get; }
    public DeviceSpec Device => _o.Device;
    public IReadOnlyList<string> ParameterNames => _params.Select(p => p.Name).ToList();
    /// <summary>Time spent averaging gradients over the ranks (data parallel), host staging included.</summary>
    public TimeSpan AllReduceTime { get; private set; }
    /// <summary>Gradient bytes each rank contributes to the all-reduce of one optimizer step (0 in one process).</summary>
    public long AllReduceBytesPerStep => _o.Communicator is { Size: > 1 } ? _gradInputs.Sum(g => g.Count * g.Type.SizeOf()) : 0;
    /// <summary>The dynamic loss scaler, when the training model seeds backward with a loss_scale input (e.g. 16-mixed).</summary>
    public LossScaler? Scaler { get; }

    public Trainer(Model training, Model eval, Model optimizer, IReadOnlyList<Tensor> parameters, IReadOnlyList<Tensor> buffers, TrainerOptions? options = null)
    {
        _o = options ?? new TrainerOptions();
        _run = _o.Device.CreateRunOptions();
        var tg = training.Graph;
        _transientGrads = tg.Inputs.All(i => i.Name != TrainingArtifacts.LazyResetGrad);
        _labels = tg.Inputs.First(i => i.Type.ElemType == DataType.Int64 && i.Name == "labels").Name;
        int labelsAt = tg.Inputs.FindIndex(i => i.Name == _labels);
        _forwardInputs = tg.Inputs.Take(labelsAt).Select(i => i.Name).ToArray();
        _evalModel = eval;
        OptimizerType = optimizer.Metadata.GetValueOrDefault("ortfinetune.optimizer", "?");
        _metrics = tg.Outputs.Any(o => o.Name == TrainingArtifacts.Top1);

        using (var so = _o.Device.CreateTrainingSessionOptions(_o.IntraOpThreads, _o.CpuMemArena))
        {
            _train = Create(training, so, "training");
            _eval = Create(eval, so, "eval");
            _optim = Create(optimizer, so, "optimizer");
        }
        _dev = new DeviceValues(_o.Device, _train);

        var optimInputs = optimizer.Graph.Inputs.Select(i => i.Name).ToHashSet();
        string[] suffixes = ["momentum_buffer", "exp_avg", OptimizerBuilder.SecondMoment, OptimizerBuilder.SecondMomentRoot, OptimizerBuilder.KahanSuffix];
        IReadOnlyList<OptimizerBucket> buckets;
        try { buckets = OptimizerBucket.Read(optimizer); }
        catch (CompileException e) { throw new TrainingException(e.Message, e); }
        if (buckets.Count > 0)
        {
            // Flat buffers per bucket (parameters, gradients, each state); every parameter's tensors are views into them.
            var place = new Dictionary<string, (BucketMember Member, int Index)>();
            var byName = parameters.ToDictionary(p => p.Name);
            foreach (var b in buckets)
            {
                if (!optimInputs.Contains(b.Name)) throw new TrainingException($"the optimizer model's bucket '{b.Name}' is not one of its inputs; recompile the artifacts");
                var flat = new FlatBucket(b, Alloc(b), _transientGrads ? null : Alloc(b), suffixes.Where(x => optimInputs.Contains(OptimizerBuilder.StateName(b.Name, x))).ToDictionary(x => x, _ => Alloc(b)));
                _buckets.Add(flat);
                foreach (var mb in b.Members)
                {
                    if (!byName.TryGetValue(mb.Param, out var p) || p.Type != b.Type || p.ElementCount != mb.Count)
                        throw new TrainingException($"the optimizer model's bucket '{b.Name}' lists '{mb.Param}' ({b.Type}, {mb.Count} elements), which this model's parameters do not match; recompile the artifacts");
                    place[mb.Param] = (mb, _buckets.Count - 1);
                }
            }
            foreach (var p in parameters)
            {
                if (!place.TryGetValue(p.Name, out var at)) throw new TrainingException($"the optimizer model does not update parameter '{p.Name}'; recompile the artifacts");
                var fb = _buckets[at.Index];
                var view = _dev.View(fb.Params.Memory, at.Member.Offset, p.Type, p.Dims);
                _dev.UploadInto(p.Type, p.Dims, p.RawData.Span, view);
                _params.Add((p.Name, p.Type, p.Dims, view));
                if (fb.Grads is { } grads) _grads.Add(_dev.View(grads.Memory, at.Member.Offset, p.Type, p.Dims));
                foreach (var (suffix, st) in fb.States)
                    _states.Add((OptimizerBuilder.StateName(p.Name, suffix), p.Type, p.Dims, _dev.View(st.Memory, at.Member.Offset, p.Type, p.Dims)));
            }
        }
        else
        {
            foreach (var p in parameters)
            {
                _params.Add((p.Name, p.Type, p.Dims, _dev.Upload(p.Type, p.Dims, p.RawData.Span)));
                if (!_transientGrads) _grads.Add(_dev.Zeros(p.Type, p.Dims));
            }
            foreach (var p in parameters)
                foreach (var suffix in suffixes)
                {
                    var name = OptimizerBuilder.StateName(p.Name, suffix);
                    if (optimInputs.Contains(name)) _states.Add((name, p.Type, p.Dims, _dev.Zeros(p.Type, p.Dims)));
                }
            foreach (var p in parameters)
                if (!optimInputs.Contains(p.Name)) throw new TrainingException($"the optimizer model does not update parameter '{p.Name}'; recompile the artifacts");
        }
        foreach (var bt in buffers) _buffers.Add((bt.Name, bt.Type, bt.Dims, _dev.Upload(bt.Type, bt.Dims, bt.RawData.Span)));
        _gradInputs.AddRange(_buckets.Count > 0
            ? _buckets.Select(b => (b.Bucket.Name + "_grad", b.Bucket.Type, b.Bucket.Elements))
            : _params.Select(p => (TrainingArtifacts.GradName(p.Name), p.Type, Count(p.Shape))));
        if (!_transientGrads)
            for (int i = 0; i < _gradInputs.Count; i++)
                _persistentGradients[_gradInputs[i].Name] = _buckets.Count > 0 ? _buckets[i].Grads!.Value.Flat : _grads[i];
        if (_transientGrads && _gradInputs.FirstOrDefault(x => tg.Outputs.All(o => o.Name != x.Name)).Name is { } missing)
            throw new TrainingException($"the training model has no gradient accumulation inputs and no output '{missing}' for the optimizer model's gradient input of that name; " +
                "compile it with gradient accumulation (ortfinetune compile --gradient-accumulation), or with its gradients in the optimizer's buckets (Optimizers.GradientBuckets)");

        bool hasLossScale = tg.Inputs.Any(i => i.Name == TrainingArtifacts.LossScaleInput);
        if (_o.LossScaling != null && !hasLossScale)
            throw new TrainingException("loss scaling was asked for, but the training model has no loss_scale input; compile it with a loss-scaling precision (e.g. 16-mixed)");
        if (hasLossScale) Scaler = new LossScaler(_o.LossScaling);
        var lossType = tg.TypeOf(TrainingArtifacts.LossOutput)!.ElemType;
        _loss = HostScalar(lossType);
        _evalLoss = HostScalar(lossType);
        _top1 = OrtValue.CreateTensorValueFromMemory(new long[1], []);
        _top5 = OrtValue.CreateTensorValueFromMemory(new long[1], []);
        _allFinite = OrtValue.CreateTensorValueFromMemory(new bool[1], []);
        _gradNorm = OrtValue.CreateTensorValueFromMemory(new float[1], []);

        // Training: params and buffers in, gradients accumulated in place (or left to ORT: transient), buffers updated in place.
        _trainBinding = _train.CreateIoBinding();
        var bound = new HashSet<string>();
        void BindTrainOutput(string name, OrtValue v) { _trainBinding.BindOutput(name, v); bound.Add(name); }
        for (int i = 0; i < _params.Count; i++) _trainBinding.BindInput(_params[i].Name, _params[i].Value);
        for (int i = 0; i < _grads.Count; i++)
        {
            _trainBinding.BindInput(TrainingArtifacts.AccumulationBuffer(_params[i].Name), _grads[i]);
            BindTrainOutput(TrainingArtifacts.GradName(_params[i].Name), _grads[i]);
        }
        foreach (var bf in _buffers)
        {
            _trainBinding.BindInput(bf.Name, bf.Value);
            BindTrainOutput(TrainingArtifacts.UpdatedName(bf.Name), bf.Value);
        }
        _lazyReset = new StepScalar<bool>(true, _transientGrads ? Array.Empty<(OrtIoBinding, string)>() : [(_trainBinding, TrainingArtifacts.LazyResetGrad)]);
        if (Scaler != null) _lossScale = new StepScalar<float>(Scaler.Scale, (_trainBinding, TrainingArtifacts.LossScaleInput));
        BindProbes(_trainBinding, tg);
        bound.UnionWith(_probes.Keys);
        BindTrainOutput(TrainingArtifacts.LossOutput, _loss);
        if (_metrics) BindTrainOutput(TrainingArtifacts.Top1, _top1);
        if (_metrics && tg.Outputs.Any(o => o.Name == TrainingArtifacts.Top5)) BindTrainOutput(TrainingArtifacts.Top5, _top5);
        _trainDeviceOutputs.AddRange(tg.Outputs.Where(o => !bound.Contains(o.Name)).Select(o => o.Name));

        _evalBinding = _eval.CreateIoBinding();
        foreach (var p in _params) _evalBinding.BindInput(p.Name, p.Value);
        foreach (var bf in _buffers) _evalBinding.BindInput(bf.Name, bf.Value);
        _evalBinding.BindOutput(TrainingArtifacts.LossOutput, _evalLoss);
        foreach (var o in eval.Graph.Outputs)
        {
            if (o.Name == TrainingArtifacts.LossOutput) continue;
            if (o.Name == TrainingArtifacts.Top1) _evalBinding.BindOutput(o.Name, _top1);
            else if (o.Name == TrainingArtifacts.Top5) _evalBinding.BindOutput(o.Name, _top5);
            else _evalDeviceOutputs.Add(o.Name);
        }

        // Optimizer: every updated output bound to the buffer it replaces.
        _optimBinding = _optim.CreateIoBinding();
        _lr = new StepScalar<float>(LearningRate, (_optimBinding, OptimizerBuilder.LearningRate));
        _step = new StepScalar<long>(1, (_optimBinding, OptimizerBuilder.Step));
        _gradScale = new StepScalar<float>(1, (_optimBinding, OptimizerBuilder.GradScale));
        if (optimInputs.Contains(OptimizerBuilder.BodyStep)) _bodyStep = new StepScalar<long>(1, (_optimBinding, OptimizerBuilder.BodyStep));
        BindProbes(_optimBinding, optimizer.Graph);
        if (_buckets.Count > 0)
            foreach (var fb in _buckets)
            {
                BindInPlace(fb.Bucket.Name, fb.Params.Flat);
                foreach (var (suffix, st) in fb.States) BindInPlace(OptimizerBuilder.StateName(fb.Bucket.Name, suffix), st.Flat);
            }
        else
        {
            foreach (var p in _params) BindInPlace(p.Name, p.Value);
            foreach (var s in _states) BindInPlace(s.Name, s.Value);
        }
        foreach (var (name, v) in _persistentGradients) _optimBinding.BindInput(name, v);
        _optimBinding.BindOutput(OptimizerBuilder.AllFinite, _allFinite);
        _optimBinding.BindOutput(OptimizerBuilder.GradNorm, _gradNorm);

        void BindInPlace(string name, OrtValue v)
        {
            _optimBinding.BindInput(name, v);
            _optimBinding.BindOutput(OptimizerBuilder.Updated(name), v);
        }
        (OrtMemoryAllocation Memory, OrtValue Flat) Alloc(OptimizerBucket b) => _dev.AllocateFlat(b.Type, b.Elements);

        if (_o.Communicator is { Size: > 1 } c)
            foreach (var (v, t, n) in ParameterBuffers().Concat(_buffers.Select(b => (b.Value, b.Type, Count(b.Shape)))))
                _dev.OnHost(v, p => c.Broadcast(p, n * t.SizeOf(), root: 0));
    }

    /// <summary>The parameter memory as the optimizer sees it: one flat buffer per bucket, else one tensor per parameter.</summary>
    IEnumerable<(OrtValue Value, DataType Type, long Count)> ParameterBuffers() => _buckets.Count > 0
        ? _buckets.Select(b => (b.Params.Flat, b.Bucket.Type, b.Bucket.Elements))
        : _params.Select(p => (p.Value, p.Type, Count(p.Shape)));

    /// <summary>The gradients as the optimizer reads them (with transient gradients: the last training run's).</summary>
    IEnumerable<(OrtValue Value, DataType Type, long Count)> GradientBuffers() =>
        _gradInputs.Select(x => ((_stepGradients ?? _persistentGradients)[x.Name], x.Type, x.Count));

    static long Count(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>A bucket's flat buffers: parameters, gradients (null when transient) and each optimizer state (by suffix).</summary>
    sealed record FlatBucket(OptimizerBucket Bucket, (OrtMemoryAllocation Memory, OrtValue Flat) Params, (OrtMemoryAllocation Memory, OrtValue Flat)? Grads,
        Dictionary<string, (OrtMemoryAllocation Memory, OrtValue Flat)> States)
    {
        public IEnumerable<(OrtMemoryAllocation Memory, OrtValue Flat)> All => (Grads is { } g ? States.Values.Prepend(g) : States.Values).Prepend(Params);
        public long Bytes => All.Sum(x => (long)x.Memory.Size);
    }

    /// <summary>Binds the <see cref="StepInputProbe"/> echo outputs a graph has to host scalars.</summary>
    void BindProbes(OrtIoBinding binding, Graph g)
    {
        foreach (var input in StepInputProbe.Inputs)
        {
            var name = StepInputProbe.OutputOf(input);
            var o = g.Outputs.FirstOrDefault(x => x.Name == name);
            if (o == null) continue;
            _probes[name] = o.Type.ElemType switch
            {
                DataType.Bool => OrtValue.CreateTensorValueFromMemory(new bool[1], []),
                DataType.Int64 => OrtValue.CreateTensorValueFromMemory(new long[1], []),
                _ => HostScalar(o.Type.ElemType),
            };
            binding.BindOutput(name, _probes[name]);
        }
    }

    /// <summary>What the device read for each per-step scalar in the last training and optimizer runs (null where the graphs have no probe).</summary>
    public StepProbe LastProbe
    {
        get
        {
            OrtValue? P(string input) => _probes.GetValueOrDefault(StepInputProbe.OutputOf(input));
            return new StepProbe(P(TrainingArtifacts.LazyResetGrad)?.GetTensorDataAsSpan<bool>()[0], P(TrainingArtifacts.LossScaleInput) is { } ls ? ReadScalar(ls) : null,
                P(OptimizerBuilder.LearningRate) is { } lr ? ReadScalar(lr) : null, P(OptimizerBuilder.Step)?.GetTensorDataAsSpan<long>()[0],
                P(OptimizerBuilder.GradScale) is { } gs ? ReadScalar(gs) : null);
        }
    }

    static OrtValue HostScalar(DataType t) => t switch
    {
        DataType.Float => OrtValue.CreateTensorValueFromMemory(new float[1], []),
        DataType.Double => OrtValue.CreateTensorValueFromMemory(new double[1], []),
        DataType.Float16 => OrtValue.CreateTensorValueFromMemory(new Float16[1], []),
        DataType.BFloat16 => OrtValue.CreateTensorValueFromMemory(new BFloat16[1], []),
        _ => throw new TrainingException($"loss of type {t} is not supported"),
    };

    static float ReadScalar(OrtValue v) => v.GetTensorTypeAndShape().ElementDataType switch
    {
        Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Float => v.GetTensorDataAsSpan<float>()[0],
        Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Double => (float)v.GetTensorDataAsSpan<double>()[0],
        Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Float16 => (float)v.GetTensorDataAsSpan<Float16>()[0],
        Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.BFloat16 => (float)v.GetTensorDataAsSpan<BFloat16>()[0],
        var t => throw new TrainingException($"unexpected scalar type {t}"),
    };

    InferenceSession Create(Model m, SessionOptions so, string what)
    {
        try { return new InferenceSession(ModelIO.ToBytes(m), so); }
        catch (OnnxRuntimeException e) { throw new TrainingException($"the {what} model does not load on {_o.Device}: {e.Message}", e); }
    }

    /// <summary>Loads artifacts written by <c>ortfinetune compile</c> (see docs/artifacts.md).</summary>
    public static Trainer Load(string folder, TrainerOptions? options = null)
    {
        string F(string f) => Path.Combine(folder, f);
        foreach (var f in new[] { Compiler.Artifacts.ArtifactWriter.TrainingModelFile, Compiler.Artifacts.ArtifactWriter.EvalModelFile, Compiler.Artifacts.ArtifactWriter.OptimizerModelFile, Compiler.Artifacts.ArtifactWriter.ParametersFile })
            if (!File.Exists(F(f))) throw new TrainingException($"{folder}: artifacts folder has no {f} (run ortfinetune compile first)");
        var train = ModelIO.Load(F(Compiler.Artifacts.ArtifactWriter.TrainingModelFile));
        var init = ModelIO.Load(F(Compiler.Artifacts.ArtifactWriter.ParametersFile)).Graph.Initializers;
        var paramNames = train.Metadata.GetValueOrDefault("ortfinetune.parameters", "").Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var bufferNames = train.Metadata.GetValueOrDefault("ortfinetune.buffers", "").Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Tensor Get(string n) => init.GetValueOrDefault(n) ?? throw new TrainingException($"{folder}: {Compiler.Artifacts.ArtifactWriter.ParametersFile} has no value for '{n}'");
        return new Trainer(train, ModelIO.Load(F(Compiler.Artifacts.ArtifactWriter.EvalModelFile)), ModelIO.Load(F(Compiler.Artifacts.ArtifactWriter.OptimizerModelFile)),
            paramNames.Select(Get).ToList(), bufferNames.Select(Get).ToList(), options);
    }

    public void SetLearningRate(float lr)
    {
        if (!(lr >= 0) || float.IsInfinity(lr)) throw new TrainingException($"learning rate {lr} is not valid");
        LearningRate = lr;
        _lr.Value = lr;
    }

    /// <summary>The next TrainStep overwrites the gradients instead of adding to them (with transient gradients it always does).</summary>
    public void LazyResetGrad() => _resetPending = true;

    /// <summary>True when the gradients exist only from the training run to the optimizer run (a training model without accumulation inputs).</summary>
    public bool TransientGradients => _transientGrads;

    /// <summary>
    /// Forward + backward on one batch; gradients are added to the accumulated ones (or reset them after LazyResetGrad).
    /// With transient gradients, the gradients of this batch alone, for the next OptimizerStep.
    /// </summary>
    public TrainStepResult TrainStep(IReadOnlyList<OrtValue> inputs, OrtValue labels)
    {
        if (inputs.Count != _forwardInputs.Length) throw new TrainingException($"the model takes {_forwardInputs.Length} inputs, {inputs.Count} given");
        if (_stepGradients != null)
            throw new TrainingException("the training model has no gradient accumulation inputs, so every TrainStep needs an OptimizerStep before the next one; " +
                "to accumulate gradients over several batches compile it with gradient accumulation (ortfinetune compile --gradient-accumulation)");
        for (int i = 0; i < inputs.Count; i++) _trainBinding.BindInput(_forwardInputs[i], inputs[i]);
        _trainBinding.BindInput(_labels, labels);
        _lazyReset.Value = _resetPending;
        // Outputs ORT allocates (logits): bound afresh each run, as their shape follows the batch size.
        foreach (var o in _trainDeviceOutputs) _trainBinding.BindOutputToDevice(o, _dev.MemoryInfo);
        _train.RunWithBinding(_run, _trainBinding);
        _trainBinding.SynchronizeBoundOutputs();
        _resetPending = false;
        if (_transientGrads)
        {
            var names = _trainBinding.GetOutputNames();
            _stepOutputs = _trainBinding.GetOutputValues();
            var byName = new Dictionary<string, OrtValue>();
            for (int i = 0; i < names.Length; i++) byName[names[i]] = _stepOutputs[i];
            _stepGradients = _gradInputs.ToDictionary(x => x.Name, x => byName[x.Name]);
        }
        return new TrainStepResult(ReadScalar(_loss), _metrics ? _top1.GetTensorDataAsSpan<long>()[0] : -1);
    }

    /// <summary>
    /// Applies the optimizer to the accumulated gradients, divided by the loss scale when there is a scaler.
    /// When a gradient is not finite nothing changes and the step counter stays; the scaler then backs off
    /// (and throws a <see cref="TrainingException"/> when the scale collapses), or grows after enough finite steps.
    /// </summary>
    public OptimizerStepResult OptimizerStep()
    {
        float scale = Scaler?.Scale ?? 1f;
        if (!UpdateBody && _bodyStep == null)
            throw new TrainingException("a head-only update needs an optimizer model compiled with head parameters (OptimizerOptions.HeadParameters)");
        if (_transientGrads)
        {
            if (_stepGradients == null) throw new TrainingException("OptimizerStep needs a TrainStep first (the training model has no gradient accumulation inputs: its gradients exist only from a TrainStep to the next OptimizerStep)");
            foreach (var (name, v) in _stepGradients) _optimBinding.BindInput(name, v);
        }
        if (_o.Communicator is { Size: > 1 } c)
        {
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            foreach (var (v, t, n) in GradientBuffers()) _dev.OnHost(v, p => c.AllReduceMean(p, n, t));
            AllReduceTime += System.Diagnostics.Stopwatch.GetElapsedTime(t0);
        }
        _step.Value = Step + 1;
        if (_bodyStep != null) _bodyStep.Value = UpdateBody ? BodyStep + 1 : 0;
        _gradScale.Value = scale;
        try
        {
            _optim.RunWithBinding(_run, _optimBinding);
            _optimBinding.SynchronizeBoundOutputs();
        }
        finally { ReleaseStepGradients(); }
        bool finite = _allFinite.GetTensorDataAsSpan<bool>()[0];
        if (finite) { Step++; if (UpdateBody) BodyStep++; }
        if (Scaler != null)
        {
            Scaler.Update(finite);
            _lossScale!.Value = Scaler.Scale;
        }
        return new OptimizerStepResult(finite, _gradNorm.GetTensorDataAsSpan<float>()[0], scale);
    }

    /// <summary>
    /// Frees the last training run's gradients (transient gradients): our references, and the bindings' (an IOBinding holds
    /// the values bound to it until they are bound again).
    /// </summary>
    void ReleaseStepGradients()
    {
        if (_stepGradients == null) return;
        foreach (var name in _stepGradients.Keys) _optimBinding.BindInput(name, _released);
        foreach (var o in _trainDeviceOutputs) _trainBinding.BindOutputToDevice(o, _dev.MemoryInfo);
        _stepOutputs!.Dispose();
        _stepOutputs = null;
        _stepGradients = null;
    }

    public EvalStepResult EvalStep(IReadOnlyList<OrtValue> inputs, OrtValue labels)
    {
        for (int i = 0; i < inputs.Count; i++) _evalBinding.BindInput(_forwardInputs[i], inputs[i]);
        _evalBinding.BindInput(_labels, labels);
        foreach (var o in _evalDeviceOutputs) _evalBinding.BindOutputToDevice(o, _dev.MemoryInfo);
        _eval.RunWithBinding(_run, _evalBinding);
        _evalBinding.SynchronizeBoundOutputs();
        return new EvalStepResult(ReadScalar(_evalLoss), _metrics ? _top1.GetTensorDataAsSpan<long>()[0] : -1, _metrics ? _top5.GetTensorDataAsSpan<long>()[0] : -1);
    }

    /// <summary>Runs the eval model and returns its forward outputs (e.g. logits), copied to the host.</summary>
    public IReadOnlyDictionary<string, Tensor> EvalOutputs(IReadOnlyList<OrtValue> inputs, OrtValue labels)
    {
        EvalStep(inputs, labels);
        var names = _evalBinding.GetOutputNames();
        var values = _evalBinding.GetOutputValues();
        var result = new Dictionary<string, Tensor>();
        try
        {
            for (int i = 0; i < names.Length; i++)
            {
                if (names[i] is TrainingArtifacts.LossOutput or TrainingArtifacts.Top1 or TrainingArtifacts.Top5) continue;
                var info = values[i].GetTensorTypeAndShape();
                result[names[i]] = new Tensor(names[i], DeviceValues.FromOrt(info.ElementDataType), info.Shape, _dev.Download(values[i]));
            }
        }
        finally { values.Dispose(); }
        return result;
    }

    /// <summary>Current value of a parameter, copied to the host.</summary>
    public Tensor GetParameter(string name)
    {
        var p = _params.FirstOrDefault(x => x.Name == name);
        if (p.Value == null) throw new TrainingException($"no parameter '{name}'");
        return new Tensor(p.Name, p.Type, p.Shape, _dev.Download(p.Value));
    }

    /// <summary>Bytes held for the whole run: parameters, gradients (unless transient), optimizer state, buffers.</summary>
    public long PersistentBytes =>
        (_buckets.Count > 0 ? _buckets.Sum(b => b.Bytes) : _params.Sum(p => Bytes(p.Type, p.Shape)) * (_transientGrads ? 1 : 2) + _states.Sum(s => Bytes(s.Type, s.Shape)))
        + _buffers.Sum(b => Bytes(b.Type, b.Shape));

    static long Bytes(DataType t, long[] shape) => shape.Aggregate(1L, (a, b) => a * b) * t.SizeOf();

    /// <summary>A hash of every parameter's and buffer's current bytes (data-parallel ranks compare theirs).</summary>
    public ulong StateDigest()
    {
        var h = new System.IO.Hashing.XxHash64();
        foreach (var p in _params.Concat(_buffers)) h.Append(_dev.HostBytes(p.Value).Span);
        return h.GetCurrentHashAsUInt64();
    }

    /// <summary>A fingerprint of the parameter set: names, dtypes and shapes.</summary>
    public string Fingerprint => string.Join(";", _params.Concat(_buffers).Select(p => $"{p.Name}:{p.Type.OnnxName()}[{string.Join(",", p.Shape)}]"));

    /// <summary>Writes parameters, buffers, optimizer state, step and learning rate, plus <paramref name="extra"/> (scheduler, scaler, RNG, data position).</summary>
    public void SaveCheckpoint(string path, IReadOnlyDictionary<string, string>? extra = null)
    {
        var ck = new CheckpointFile();
        foreach (var p in _params) ck.Tensors.Add(new Tensor("param/" + p.Name, p.Type, p.Shape, _dev.HostBytes(p.Value)));
        foreach (var b in _buffers) ck.Tensors.Add(new Tensor("buffer/" + b.Name, b.Type, b.Shape, _dev.HostBytes(b.Value)));
        foreach (var s in _states) ck.Tensors.Add(new Tensor("optim/" + s.Name, s.Type, s.Shape, _dev.HostBytes(s.Value)));
        ck.Meta["fingerprint"] = Fingerprint;
        ck.Meta["optimizer"] = OptimizerType;
        ck.Meta["step"] = Step.ToString(CultureInfo.InvariantCulture);
        ck.Meta["body_step"] = BodyStep.ToString(CultureInfo.InvariantCulture);
        ck.Meta["learning_rate"] = LearningRate.ToString("R", CultureInfo.InvariantCulture);
        if (Scaler != null) foreach (var (k, v) in Scaler.State()) ck.Meta[k] = v;
        if (extra != null) foreach (var (k, v) in extra) ck.Meta["user." + k] = v;
        ck.Save(path);
    }

    /// <summary>Restores a checkpoint written by <see cref="SaveCheckpoint"/>; returns the extra entries saved with it.</summary>
    public IReadOnlyDictionary<string, string> LoadCheckpoint(string path)
    {
        var ck = CheckpointFile.Load(path);
        var fp = ck.Meta.GetValueOrDefault("fingerprint", "");
        if (fp != Fingerprint)
        {
            var theirs = fp.Split(';').ToHashSet();
            var mine = Fingerprint.Split(';');
            var diff = mine.FirstOrDefault(x => !theirs.Contains(x)) ?? theirs.FirstOrDefault(x => !mine.Contains(x)) ?? "?";
            throw new CheckpointException($"{path}: checkpoint is from another model (first difference: '{diff}')");
        }
        if (ck.Meta.GetValueOrDefault("optimizer") != OptimizerType)
            throw new CheckpointException($"{path}: checkpoint was written with optimizer '{ck.Meta.GetValueOrDefault("optimizer")}', this run uses '{OptimizerType}'");
        void Restore(string name, DataType t, long[] shape, OrtValue dst)
        {
            var src = ck.Get(name, path);
            if (src.Type != t || !src.Dims.SequenceEqual(shape)) throw new CheckpointException($"{path}: tensor '{name}' has type/shape {src.TensorType}, expected {TensorType.Of(t, shape)}");
            _dev.UploadInto(t, shape, src.RawData.Span, dst);
        }
        // Validate everything before changing anything.
        var scaler = Scaler == null ? null : new LossScaler(Scaler.Settings);
        try { scaler?.Load(ck.Meta); }
        catch (CheckpointException e) { throw new CheckpointException($"{path}: {e.Message}", e); }
        foreach (var p in _params) ck.Get("param/" + p.Name, path);
        foreach (var b in _buffers) ck.Get("buffer/" + b.Name, path);
        foreach (var s in _states) ck.Get("optim/" + s.Name, path);
        foreach (var p in _params) Restore("param/" + p.Name, p.Type, p.Shape, p.Value);
        foreach (var b in _buffers) Restore("buffer/" + b.Name, b.Type, b.Shape, b.Value);
        foreach (var s in _states) Restore("optim/" + s.Name, s.Type, s.Shape, s.Value);
        Step = long.Parse(ck.Meta["step"], CultureInfo.InvariantCulture);
        BodyStep = ck.Meta.TryGetValue("body_step", out var bodyStep) ? long.Parse(bodyStep, CultureInfo.InvariantCulture) : Step;
        SetLearningRate(float.Parse(ck.Meta["learning_rate"], CultureInfo.InvariantCulture));
        if (scaler != null) { Scaler!.Load(scaler.State()); _lossScale!.Value = Scaler.Scale; }
        _resetPending = true;
        ReleaseStepGradients();
        return ck.Meta.Where(kv => kv.Key.StartsWith("user.")).ToDictionary(kv => kv.Key[5..], kv => kv.Value);
    }

    /// <summary>
    /// Writes a plain inference model: the eval graph without loss, labels and metrics, with the
    /// current parameters and buffers as initializers (fp32 unless the parameters are 16-bit).
    /// </summary>
    public void ExportModelForInferencing(string path, IReadOnlyList<string>? outputs = null)
    {
        var m = _evalModel.Clone();
        var g = m.Graph;
        var keep = outputs ?? g.Outputs.Select(o => o.Name).Where(n => n is not (TrainingArtifacts.LossOutput or TrainingArtifacts.Top1 or TrainingArtifacts.Top5)).ToList();
        foreach (var k in keep) if (g.Outputs.All(o => o.Name != k)) throw new TrainingException($"the model has no output '{k}' to export");
        var outs = g.Outputs.Where(o => keep.Contains(o.Name)).ToList();
        g.Outputs.Clear(); g.Outputs.AddRange(outs);
        var state = _params.Concat(_buffers).ToDictionary(p => p.Name);
        g.Inputs.RemoveAll(i => i.Name == _labels || state.ContainsKey(i.Name));
        foreach (var p in state.Values) g.Initializers[p.Name] = new Tensor(p.Name, p.Type, p.Shape, _dev.HostBytes(p.Value));
        g.RemoveDeadNodes();
        g.Name = "inference";
        m.Metadata["ortfinetune.role"] = "inference";
        m.Metadata["ortfinetune.step"] = Step.ToString(CultureInfo.InvariantCulture);
        try { ModelIO.Save(m, path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentOutOfRangeException) // the last: EFBIG
        { throw new TrainingException($"{path}: could not write the exported model ({e.Message})", e); }
    }

    public void Dispose()
    {
        _stepOutputs?.Dispose();
        _released.Dispose();
        _trainBinding.Dispose(); _evalBinding.Dispose(); _optimBinding.Dispose();
        foreach (var v in _params.Select(p => p.Value).Concat(_grads).Concat(_buffers.Select(b => b.Value)).Concat(_states.Select(s => s.Value))) v.Dispose();
        foreach (var (memory, flat) in _buckets.SelectMany(b => b.All)) { flat.Dispose(); memory.Dispose(); }
        _lazyReset.Dispose(); _lr.Dispose(); _step.Dispose(); _bodyStep?.Dispose(); _gradScale.Dispose(); _lossScale?.Dispose();
        foreach (var v in _probes.Values.Concat([_loss, _top1, _top5, _evalLoss, _allFinite, _gradNorm])) v.Dispose();
        _dev.Dispose();
        _train.Dispose(); _eval.Dispose(); _optim.Dispose();
        _run.Dispose();
    }
}
