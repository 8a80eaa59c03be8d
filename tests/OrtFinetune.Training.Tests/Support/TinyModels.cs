using OrtFinetune.Onnx;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Support;

/// <summary>Small forward models and a synthetic image task, built in the test (no files, no downloads).</summary>
public static class TinyModels
{
    public const int Classes = 4, Size = 8;

    /// <summary>Conv(1->4, k3, p1) + Relu + Flatten + Gemm(256 -> 16) + Relu + Gemm(16 -> 4), input (N, 1, 8, 8), symbolic N.</summary>
    public static Model ConvNet(int seed)
    {
        var m = new Model();
        m.Opsets[""] = 17;
        var g = m.Graph;
        var rng = new Random(seed);
        float[] Init(int n, double scale) => Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();
        g.Initializers["conv.weight"] = Tensor.Float("conv.weight", Init(4 * 9, 1 / 3.0), 4, 1, 3, 3);
        g.Initializers["conv.bias"] = Tensor.Float("conv.bias", Init(4, 0.1), 4);
        g.Initializers["fc1.weight"] = Tensor.Float("fc1.weight", Init(16 * 256, 1 / 16.0), 16, 256);
        g.Initializers["fc1.bias"] = Tensor.Float("fc1.bias", Init(16, 0.05), 16);
        g.Initializers["fc2.weight"] = Tensor.Float("fc2.weight", Init(Classes * 16, 0.25), Classes, 16);
        g.Initializers["fc2.bias"] = Tensor.Float("fc2.bias", Init(Classes, 0.05), Classes);
        g.Inputs.Add(new ValueInfo("input", new TensorType(DataType.Float, [new Dim("N"), 1, Size, Size])));
        g.Nodes.Add(new Node("Conv", ["input", "conv.weight", "conv.bias"], ["c"], "conv").Set(NodeAttribute.Of("pads", new long[] { 1, 1, 1, 1 })));
        g.Nodes.Add(new Node("Relu", ["c"], ["r"], "relu"));
        g.Nodes.Add(new Node("Flatten", ["r"], ["f"], "flatten"));
        g.Nodes.Add(new Node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["h"], "fc1").Set(NodeAttribute.Of("transB", 1L)));
        g.Nodes.Add(new Node("Relu", ["h"], ["h2"], "relu2"));
        g.Nodes.Add(new Node("Gemm", ["h2", "fc2.weight", "fc2.bias"], ["logits"], "fc2").Set(NodeAttribute.Of("transB", 1L)));
        g.Outputs.Add(new ValueInfo("logits", new TensorType(DataType.Float, [new Dim("N"), Classes])));
        return m;
    }

    /// <summary>
    /// Images of a bright bar on noise; the class is where the bar is (top row band, bottom band,
    /// left column band, right band), at a random offset inside its half. Separable, but not trivially.
    /// </summary>
    public static (float[] Images, long[] Labels) Bars(int n, int seed)
    {
        var rng = new Random(seed);
        var x = new float[n * Size * Size];
        var y = new long[n];
        for (int i = 0; i < n; i++)
        {
            int c = rng.Next(Classes);
            y[i] = c;
            int pos = rng.Next(Size / 2) + (c % 2 == 1 ? Size / 2 : 0);
            for (int r = 0; r < Size; r++)
                for (int col = 0; col < Size; col++)
                {
                    bool on = c < 2 ? r == pos : col == pos;
                    x[i * Size * Size + r * Size + col] = (float)((on ? 1.0 : 0.0) + 0.35 * (rng.NextDouble() * 2 - 1));
                }
        }
        return (x, y);
    }
}
