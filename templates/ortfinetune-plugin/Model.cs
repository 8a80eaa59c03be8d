using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;

namespace MyPlugin;

/// <summary>The plugin's entry point: the host creates it and lets it register its providers as singletons.</summary>
public sealed class ModelPlugin : IPlugin
{
    public string Name => "MyPlugin";
    public void Configure(IServiceCollection services) => services.AddSingleton<IModelProvider, MlpProvider>();
}

/// <summary>
/// <c>--model myplugin</c>: a two-layer perceptron over the pixels, built as an ONNX forward graph
/// (Flatten, Gemm, Relu, Gemm), initialized like torch.nn.Linear from the run's seed. The host compiles it into
/// training graphs (loss, autodiff, optimizer): use standard ONNX operators (the built-in ViT uses Conv, MatMul,
/// LayerNormalization, Softmax, Gelu, ...), float initializers for trainable parameters and Constant nodes for
/// anything that must not train.
/// </summary>
public sealed class MlpProvider : IModelProvider
{
    public const int DefaultImageSize = 16, Hidden = 128;
    const string Input = "input", Logits = "logits", Batch = "N";

    public string Name => "myplugin";
    public IReadOnlyList<string> Architectures { get; } = ["myplugin"];
    public string Description => $"a two-layer perceptron (hidden {Hidden}) over {DefaultImageSize} px images (--image-size to change)";

    public ModelDefinition Create(ModelRequest request)
    {
        if (request.NumClasses < 2) throw new ModelException($"{Name}: needs at least 2 classes, got {request.NumClasses}");
        if (request.WeightsPath != null) throw new ModelException($"{Name}: has no pretrained weights (--weights {request.WeightsPath})");
        int size = request.ImageSize > 0 ? request.ImageSize : DefaultImageSize;
        if (size > 128) throw new ModelException($"{Name}: --image-size {size} is too large for a perceptron over pixels (at most 128)");
        int features = request.Channels * size * size;

        var model = new Model();
        model.Opsets[""] = 17;
        var g = model.Graph;
        g.Name = Name;
        g.Inputs.Add(new ValueInfo(Input, new TensorType(DataType.Float, [new Dim(Batch), request.Channels, size, size])));
        var rng = new SplitMix64(SplitMix64.Hash(request.Seed, 0x4D4C50));
        Linear(g, "fc1", features, Hidden, ref rng);
        Linear(g, "fc2", Hidden, request.NumClasses, ref rng);
        g.Nodes.Add(new Node("Flatten", [Input], ["x"], "flatten").Set(NodeAttribute.Of("axis", 1L)));
        g.Nodes.Add(new Node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], "fc1").Set(NodeAttribute.Of("transB", 1L)));
        g.Nodes.Add(new Node("Relu", ["h"], ["a"], "relu"));
        g.Nodes.Add(new Node("Gemm", ["a", "fc2.weight", "fc2.bias"], [Logits], "fc2").Set(NodeAttribute.Of("transB", 1L)));
        g.Outputs.Add(new ValueInfo(Logits, new TensorType(DataType.Float, [new Dim(Batch), request.NumClasses])));

        long parameters = (long)features * Hidden + Hidden + (long)Hidden * request.NumClasses + request.NumClasses;
        return new ModelDefinition
        {
            Forward = model,
            InputName = Input,
            ImageSize = size,
            Channels = request.Channels,
            Mean = Enumerable.Repeat(0.5f, request.Channels).ToArray(),
            Std = Enumerable.Repeat(0.25f, request.Channels).ToArray(),
            Description = $"{Name}: {features} -> {Hidden} -> {request.NumClasses} perceptron ({parameters:N0} parameters)",
        };
    }

    /// <summary>torch.nn.Linear's initialization: weight (out, in) and bias uniform in +-1/sqrt(in).</summary>
    static void Linear(Graph g, string name, int inputs, int outputs, ref SplitMix64 rng)
    {
        double bound = 1 / Math.Sqrt(inputs);
        var w = new float[(long)outputs * inputs];
        for (long k = 0; k < w.Length; k++) w[k] = (float)rng.Uniform(-bound, bound);
        var b = new float[outputs];
        for (int k = 0; k < b.Length; k++) b[k] = (float)rng.Uniform(-bound, bound);
        g.Initializers[name + ".weight"] = Tensor.Float(name + ".weight", w, outputs, inputs);
        g.Initializers[name + ".bias"] = Tensor.Float(name + ".bias", b, outputs);
    }
}
