using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using TensorElementType = Microsoft.ML.OnnxRuntime.Tensors.TensorElementType;

namespace OrtFinetune.Onnx.Tests.Support;

public static class Fixtures
{
    public static string Root
    {
        get
        {
            var d = new DirectoryInfo(AppContext.BaseDirectory);
            while (d != null && !Directory.Exists(Path.Combine(d.FullName, "tests", "fixtures", "autodiff"))) d = d.Parent;
            return d == null ? throw new DirectoryNotFoundException("tests/fixtures/autodiff not found above " + AppContext.BaseDirectory)
                : Path.Combine(d.FullName, "tests", "fixtures", "autodiff");
        }
    }

    public static string[] Cases => Directory.GetDirectories(Root).Select(Path.GetFileName).Order().ToArray()!;
    public static string ModelPath(string name) => Path.Combine(Root, name, "model.onnx");
    public static Model Load(string name) => ModelIO.Load(ModelPath(name));

    /// <summary>Replaces the first dim of every graph input with the symbol <paramref name="sym"/>.</summary>
    public static Model WithSymbolicBatch(Model m, string sym = "N")
    {
        for (int i = 0; i < m.Graph.Inputs.Count; i++)
        {
            var vi = m.Graph.Inputs[i];
            if (vi.Type.Shape is { Length: > 0 } s)
            {
                var ns = (Dim[])s.Clone();
                ns[0] = new Dim(sym);
                m.Graph.Inputs[i] = vi with { Type = vi.Type with { Shape = ns } };
            }
        }
        return m;
    }
}

/// <summary>Runs a model in ORT with every node output exposed, returning each value's type and shape.</summary>
public static class OrtShapes
{
    public static Dictionary<string, (DataType Type, long[] Shape)> RunAll(Model model, int seed = 1, long symbolicDim = 8)
    {
        var m = ModelIO.FromBytes(ModelIO.ToBytes(model));
        var outs = m.Graph.Outputs.Select(o => o.Name).ToHashSet();
        foreach (var n in m.Graph.Nodes)
            foreach (var o in n.Outputs)
                if (o.Length > 0 && outs.Add(o)) m.Graph.Outputs.Add(new ValueInfo(o, new TensorType(DataType.Undefined, null)));
        m.Graph.ValueTypes.Clear();
        var so = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL, IntraOpNumThreads = 1 };
        using var session = new InferenceSession(ModelIO.ToBytes(m), so);
        var rng = new Random(seed);
        var inputs = new List<OrtValue>();
        var names = new List<string>();
        try
        {
            foreach (var i in m.Graph.Inputs)
            {
                var shape = i.Type.Shape!.Select(d => d.Value ?? symbolicDim).ToArray();
                long count = shape.Aggregate(1L, (a, b) => a * b);
                inputs.Add(i.Type.ElemType switch
                {
                    DataType.Float => OrtValue.CreateTensorValueFromMemory(Enumerable.Range(0, (int)count).Select(_ => (float)rng.NextDouble()).ToArray(), shape),
                    DataType.Double => OrtValue.CreateTensorValueFromMemory(Enumerable.Range(0, (int)count).Select(_ => rng.NextDouble()).ToArray(), shape),
                    DataType.Float16 => OrtValue.CreateTensorValueFromMemory(Enumerable.Range(0, (int)count).Select(_ => (Float16)(float)rng.NextDouble()).ToArray(), shape),
                    DataType.Int64 => OrtValue.CreateTensorValueFromMemory(new long[count], shape),
                    DataType.Int32 => OrtValue.CreateTensorValueFromMemory(new int[count], shape),
                    DataType.Bool => OrtValue.CreateTensorValueFromMemory(new bool[count], shape),
                    _ => throw new NotSupportedException(i.Type.ToString()),
                });
                names.Add(i.Name);
            }
            var outNames = m.Graph.Outputs.Select(o => o.Name).ToArray();
            using var results = session.Run(new RunOptions(), names, inputs, outNames);
            var d = new Dictionary<string, (DataType, long[])>();
            for (int k = 0; k < outNames.Length; k++)
            {
                var info = results[k].GetTensorTypeAndShape();
                d[outNames[k]] = (Map(info.ElementDataType), info.Shape);
            }
            return d;
        }
        finally { foreach (var v in inputs) v.Dispose(); }
    }

    static DataType Map(TensorElementType t) => t switch
    {
        TensorElementType.Float => DataType.Float, TensorElementType.Double => DataType.Double,
        TensorElementType.Int64 => DataType.Int64, TensorElementType.Int32 => DataType.Int32,
        TensorElementType.Bool => DataType.Bool, TensorElementType.Float16 => DataType.Float16,
        TensorElementType.UInt8 => DataType.UInt8, TensorElementType.Int8 => DataType.Int8,
        _ => DataType.Undefined,
    };
}
