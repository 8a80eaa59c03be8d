using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Optimizers;

namespace OrtFinetune.Training.Tests.Support;

/// <summary>
/// Runs an optimizer model (either layout) on float32 parameters held in host arrays, as a host without IOBinding
/// would (docs/artifacts.md): each member a slice of its bucket's flat tensors, or its own tensor per parameter.
/// Values are addressed as "p", "p_grad" and "p.&lt;state&gt;" whatever the layout.
/// </summary>
public sealed class OptimizerHarness : IDisposable
{
    readonly InferenceSession _session;
    readonly Dictionary<string, float[]> _inputs = new();
    readonly Dictionary<string, long[]> _shapes = new();
    readonly Dictionary<string, (string Input, int Offset, int Count)> _at = new();
    readonly HashSet<string> _scalars;

    public IReadOnlyList<OptimizerBucket> Buckets { get; }
    public string[] States { get; }
    public bool AllFinite { get; private set; }
    public float GradNorm { get; private set; }

    public OptimizerHarness(Model optimizer, IReadOnlyList<Tensor> parameters, OptimizerOptions options)
    {
        _session = new InferenceSession(ModelIO.ToBytes(optimizer));
        _scalars = optimizer.Graph.Inputs.Where(i => i.Type.Shape is { Length: 0 }).Select(i => i.Name).ToHashSet();
        Buckets = OptimizerBucket.Read(optimizer);
        States = options.StateSuffixes(DataType.Float);
        var slots = Buckets.Count > 0
            ? Buckets.SelectMany(b => b.Members.Select(m => (m.Param, Input: b.Name, Offset: (int)m.Offset, Shape: new[] { b.Elements })))
            : parameters.Select(p => (Param: p.Name, Input: p.Name, Offset: 0, Shape: p.Dims));
        var count = parameters.ToDictionary(p => p.Name, p => (int)p.ElementCount);
        foreach (var (param, input, offset, shape) in slots)
            foreach (var (mine, graphInput) in States.Select(s => (OptimizerBuilder.StateName(param, s), OptimizerBuilder.StateName(input, s))).Append((param, input)).Append((param + "_grad", input + "_grad")))
            {
                if (!_inputs.ContainsKey(graphInput)) { _inputs[graphInput] = new float[shape.Aggregate(1L, (a, x) => a * x)]; _shapes[graphInput] = shape; }
                _at[mine] = (graphInput, offset, count[param]);
            }
        foreach (var p in parameters) p.ToFloats().CopyTo(Span(p.Name));
    }

    Span<float> Span(string key) { var (input, offset, n) = _at[key]; return _inputs[input].AsSpan(offset, n); }

    /// <summary>A copy of a parameter ("p"), gradient ("p_grad") or state ("p.exp_avg").</summary>
    public float[] Get(string key) => Span(key).ToArray();

    /// <summary>Every parameter and state value, by key (a snapshot).</summary>
    public Dictionary<string, float[]> Snapshot() => _at.Keys.Where(k => !k.EndsWith("_grad")).ToDictionary(k => k, Get);

    /// <summary>One run: the gradients given, then every .updated output taken as the new value.</summary>
    public void Step(IReadOnlyDictionary<string, float[]> grads, float lr, long step, long? bodyStep = null, float gradScale = 1)
    {
        foreach (var (name, g) in grads) g.CopyTo(Span(name + "_grad"));
        var feeds = new Dictionary<string, OrtValue>();
        try
        {
            feeds[OptimizerBuilder.LearningRate] = OrtValue.CreateTensorValueFromMemory(new[] { lr }, []);
            feeds[OptimizerBuilder.Step] = OrtValue.CreateTensorValueFromMemory(new[] { step }, []);
            feeds[OptimizerBuilder.GradScale] = OrtValue.CreateTensorValueFromMemory(new[] { gradScale }, []);
            if (bodyStep is long bs) feeds[OptimizerBuilder.BodyStep] = OrtValue.CreateTensorValueFromMemory(new[] { bs }, []);
            Assert.Equal(_scalars.Order(), feeds.Keys.Order());
            foreach (var (name, data) in _inputs) feeds[name] = OrtValue.CreateTensorValueFromMemory(data.ToArray(), _shapes[name]);
            var outputs = _session.OutputNames.ToArray();
            using var ro = new RunOptions();
            using var results = _session.Run(ro, feeds.Keys.ToArray(), feeds.Values.ToArray(), outputs);
            for (int i = 0; i < outputs.Length; i++)
            {
                if (outputs[i] == OptimizerBuilder.AllFinite) AllFinite = results[i].GetTensorDataAsSpan<bool>()[0];
                else if (outputs[i] == OptimizerBuilder.GradNorm) GradNorm = results[i].GetTensorDataAsSpan<float>()[0];
                else results[i].GetTensorDataAsSpan<float>().CopyTo(_inputs[outputs[i][..^".updated".Length]]);
            }
        }
        finally { foreach (var v in feeds.Values) v.Dispose(); }
    }

    public void Dispose() => _session.Dispose();
}
