using Microsoft.ML.OnnxRuntime;
using TensorElementType = Microsoft.ML.OnnxRuntime.Tensors.TensorElementType;
using OrtFinetune.Onnx;

namespace OrtFinetune.Plugins.Models.Tests.Support;

/// <summary>A named host tensor for tests: element type, shape and values (held as double, or int64).</summary>
public sealed record HostTensor(DataType Type, long[] Shape, double[] Values)
{
    public static HostTensor F32(double[] v, params long[] s) => new(DataType.Float, s, v);
    public static HostTensor F64(double[] v, params long[] s) => new(DataType.Double, s, v);
    public static HostTensor I64(long[] v, params long[] s) => new(DataType.Int64, s, v.Select(x => (double)x).ToArray());
    public static HostTensor FromTensor(Tensor t) => new(t.Type, t.Dims, t.ToDoubles());
    public long Count => Shape.Aggregate(1L, (a, b) => a * b);
    public HostTensor As(DataType t) => this with { Type = t };
}

/// <summary>Runs an IR model in a plain InferenceSession of the stock CPU package.</summary>
public sealed class OrtRunner : IDisposable
{
    readonly InferenceSession _session;
    public InferenceSession Session => _session;

    public OrtRunner(Model model, bool optimize = true)
    {
        var so = new SessionOptions
        {
            GraphOptimizationLevel = optimize ? GraphOptimizationLevel.ORT_ENABLE_ALL : GraphOptimizationLevel.ORT_DISABLE_ALL,
            IntraOpNumThreads = 2,
        };
        _session = new InferenceSession(ModelIO.ToBytes(model), so);
    }

    public Dictionary<string, HostTensor> Run(IReadOnlyDictionary<string, HostTensor> inputs, IEnumerable<string>? outputs = null)
    {
        var names = inputs.Keys.ToArray();
        var values = names.Select(n => ToOrt(inputs[n])).ToArray();
        try
        {
            var outNames = (outputs ?? _session.OutputNames).ToArray();
            using var results = _session.Run(new RunOptions(), names, values, outNames);
            var d = new Dictionary<string, HostTensor>();
            for (int i = 0; i < outNames.Length; i++) d[outNames[i]] = FromOrt(results[i]);
            return d;
        }
        finally { foreach (var v in values) v.Dispose(); }
    }

    public static OrtValue ToOrt(HostTensor t) => t.Type switch
    {
        DataType.Float => OrtValue.CreateTensorValueFromMemory(t.Values.Select(x => (float)x).ToArray(), t.Shape),
        DataType.Double => OrtValue.CreateTensorValueFromMemory(t.Values.ToArray(), t.Shape),
        DataType.Int64 => OrtValue.CreateTensorValueFromMemory(t.Values.Select(x => (long)x).ToArray(), t.Shape),
        DataType.Int32 => OrtValue.CreateTensorValueFromMemory(t.Values.Select(x => (int)x).ToArray(), t.Shape),
        DataType.Bool => OrtValue.CreateTensorValueFromMemory(t.Values.Select(x => x != 0).ToArray(), t.Shape),
        DataType.Float16 => OrtValue.CreateTensorValueFromMemory(t.Values.Select(x => (Float16)(float)x).ToArray(), t.Shape),
        _ => throw new NotSupportedException(t.Type.ToString()),
    };

    public static HostTensor FromOrt(OrtValue v)
    {
        var info = v.GetTensorTypeAndShape();
        var shape = info.Shape;
        double[] vals = info.ElementDataType switch
        {
            TensorElementType.Float => v.GetTensorDataAsSpan<float>().ToArray().Select(x => (double)x).ToArray(),
            TensorElementType.Double => v.GetTensorDataAsSpan<double>().ToArray(),
            TensorElementType.Int64 => v.GetTensorDataAsSpan<long>().ToArray().Select(x => (double)x).ToArray(),
            TensorElementType.Int32 => v.GetTensorDataAsSpan<int>().ToArray().Select(x => (double)x).ToArray(),
            TensorElementType.Bool => v.GetTensorDataAsSpan<bool>().ToArray().Select(x => x ? 1.0 : 0.0).ToArray(),
            TensorElementType.Float16 => v.GetTensorDataAsSpan<Float16>().ToArray().Select(x => (double)(float)x).ToArray(),
            _ => throw new NotSupportedException(info.ElementDataType.ToString()),
        };
        var dt = info.ElementDataType switch
        {
            TensorElementType.Float => DataType.Float, TensorElementType.Double => DataType.Double,
            TensorElementType.Int64 => DataType.Int64, TensorElementType.Int32 => DataType.Int32,
            TensorElementType.Bool => DataType.Bool, TensorElementType.Float16 => DataType.Float16, _ => DataType.Undefined,
        };
        return new HostTensor(dt, shape, vals);
    }

    public void Dispose() => _session.Dispose();
}
