using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;

namespace OrtFinetune.Plugins.Models.Weights;

/// <summary>
/// Writes a ViT's weights (our torchvision-named float initializers, e.g. of an exported inference model) as a
/// safetensors state_dict in torchvision, Hugging Face (ViTForImageClassification; in_proj split into query,
/// key, value; config.json written next to it) or timm naming, as float32.
/// </summary>
public sealed class WeightExport : IWeightExporter
{
    public string Format => "safetensors";
    public IReadOnlyList<string> Namings { get; } = ["torchvision", "hf", "timm"];

    public string Export(Model inference, string path, string naming) => Write(inference, path, NameMap.Parse(naming, "--naming"));

    public static string Write(Model model, string path, WeightNaming naming)
    {
        var inits = model.Graph.Initializers;
        int layers = 0;
        while (inits.ContainsKey(VitNames.Layer(layers) + "ln_1.weight")) layers++;
        if (layers == 0 || !inits.ContainsKey(VitNames.PatchWeight))
            throw new ModelException($"{path}: the model is not a ViT with torchvision parameter names (no '{VitNames.PatchWeight}' / '{VitNames.Layer(0)}ln_1.weight'); only ViT models export to safetensors");
        var map = NameMap.For(naming);
        var items = new List<SafetensorsWriter.Item>();
        foreach (var src in map.Sources(layers))
        {
            if (!inits.TryGetValue(src.Ours, out var t)) throw new ModelException($"{path}: the model has no parameter '{src.Ours}' to export");
            var values = t.ToFloats();
            if (src.IsFused)
            {
                if (t.Dims[0] % 3 != 0) throw new ModelException($"{path}: '{src.Ours}' [{string.Join(", ", t.Dims)}] does not split into query, key and value");
                long[] dims = [t.Dims[0] / 3, .. t.Dims.Skip(1)];
                int n = values.Length / 3;
                for (int k = 0; k < 3; k++) items.Add(new(src.Keys[k], "F32", dims, MemoryMarshal.AsBytes(values.AsSpan(k * n, n)).ToArray()));
            }
            else items.Add(new(src.Keys[0], "F32", t.Dims, MemoryMarshal.AsBytes(values.AsSpan()).ToArray()));
        }
        SafetensorsWriter.Write(path, items, new Dictionary<string, string> { ["format"] = "pt", ["source"] = "ortfinetune export", ["naming"] = NameMap.Name(naming) });
        string extra = "";
        if (naming == WeightNaming.Hf)
        {
            var cfgPath = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "config.json");
            var cfg = HfConfig(model, layers);
            try { File.WriteAllText(cfgPath, cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n"); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ModelException($"{cfgPath}: cannot write: {e.Message}", e); }
            extra = $" and {cfgPath}";
        }
        return $"exported {items.Count} tensors ({NameMap.Name(naming)} naming, float32) to {path}{extra}";
    }

    static JsonObject HfConfig(Model model, int layers)
    {
        var g = model.Graph.Initializers;
        var patch = g[VitNames.PatchWeight].Dims;
        var head = g[VitNames.HeadWeight].Dims;
        int hidden = (int)patch[0];
        int Meta(string key, int fallback) => model.Metadata.TryGetValue(key, out var v) && int.TryParse(v, CultureInfo.InvariantCulture, out var i) ? i : fallback;
        double eps = model.Metadata.TryGetValue(VitBuilder.MetaEpsilon, out var e) && double.TryParse(e, CultureInfo.InvariantCulture, out var d) ? d : 1e-6;
        int grid = PositionEmbedding.GridOf(g[VitNames.PosEmbedding].Dims[1]) ?? 0;
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray("ViTForImageClassification"),
            ["model_type"] = "vit",
            ["hidden_size"] = hidden,
            ["num_hidden_layers"] = layers,
            ["num_attention_heads"] = Meta(VitBuilder.MetaHeads, Math.Max(1, hidden / 64)),
            ["intermediate_size"] = (int)g[VitNames.Layer(0) + "mlp.0.weight"].Dims[0],
            ["hidden_act"] = "gelu",
            ["hidden_dropout_prob"] = 0.0,
            ["attention_probs_dropout_prob"] = 0.0,
            ["layer_norm_eps"] = double.Parse(((float)eps).ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture),
            ["image_size"] = Meta(VitBuilder.MetaImageSize, grid * (int)patch[2]),
            ["patch_size"] = (int)patch[2],
            ["num_channels"] = (int)patch[1],
            ["qkv_bias"] = true,
        };
        var id2label = new JsonObject();
        var label2id = new JsonObject();
        for (int i = 0; i < head[0]; i++) { id2label[i.ToString(CultureInfo.InvariantCulture)] = $"LABEL_{i}"; label2id[$"LABEL_{i}"] = i; }
        o["id2label"] = id2label;
        o["label2id"] = label2id;
        return o;
    }
}
