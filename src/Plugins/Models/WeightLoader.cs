using System.Runtime.InteropServices;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;

namespace OrtFinetune.Plugins.Models;

/// <summary>What loading pretrained weights did.</summary>
public sealed record WeightLoadReport(int Loaded, IReadOnlyList<string> Skipped, IReadOnlyList<string> Notes);

/// <summary>
/// Copies tensors of a safetensors file into a model's float initializers by name (converting F16/BF16/F64
/// to float32). Every float initializer must be present with the same shape, except the classifier head
/// (names under <paramref name="headPrefix"/>), which keeps its fresh initialization when the file's class
/// count differs (finetuning to a new number of classes). Tensors of the file the model lacks are ignored
/// with a note.
/// </summary>
public static class WeightLoader
{
    /// <summary>Older torchvision checkpoints name the ViT MLP layers linear_1/linear_2 (torchvision renames them on load).</summary>
    static IEnumerable<string> Aliases(string name)
    {
        yield return name;
        if (name.Contains(".mlp.0.")) yield return name.Replace(".mlp.0.", ".mlp.linear_1.");
        if (name.Contains(".mlp.3.")) yield return name.Replace(".mlp.3.", ".mlp.linear_2.");
    }

    public static WeightLoadReport Load(Model model, string path, IReadOnlyList<string> headNames)
    {
        var file = SafetensorsReader.Open(path);
        var g = model.Graph;
        var used = new HashSet<string>();
        var skipped = new List<string>();
        var notes = new List<string>();
        var missing = new List<string>();
        int loaded = 0;
        foreach (var (name, t) in g.Initializers.ToList())
        {
            if (t.Type != DataType.Float) continue;
            var key = Aliases(name).FirstOrDefault(file.Tensors.ContainsKey);
            if (key == null)
            {
                if (headNames.Contains(name)) notes.Add($"'{name}' is not in the weights; the head keeps its fresh initialization");
                else if (!name.StartsWith("onnx::", StringComparison.Ordinal)) missing.Add(name);
                continue;
            }
            used.Add(key);
            var e = file.Tensors[key];
            if (!e.Shape.SequenceEqual(t.Dims))
            {
                bool isHead = headNames.Contains(name);
                if (isHead && e.Shape.Length == t.Dims.Length && e.Shape.Length > 0 && e.Shape.Skip(1).SequenceEqual(t.Dims.Skip(1)))
                {
                    skipped.Add(name);
                    notes.Add($"'{name}' not loaded: the weights have {e.Shape[0]} classes, the model {t.Dims[0]}; the head keeps its fresh initialization");
                    continue;
                }
                throw new ModelException($"{path}: tensor '{key}' has shape {e.ShapeText} but the model's '{name}' is [{string.Join(", ", t.Dims)}]"
                    + (name == "encoder.pos_embedding" ? " (the weights were trained at another image size or patch size)" : ""));
            }
            var values = file.ReadFloats(key);
            g.Initializers[name] = new Tensor(name, DataType.Float, t.Dims, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());
            loaded++;
        }
        if (missing.Count > 0)
            throw new ModelException($"{path}: the weights lack {missing.Count} tensor(s) of the model: {string.Join(", ", missing.Take(8))}{(missing.Count > 8 ? ", ..." : "")} (is it the right architecture?)");
        var extra = file.Tensors.Keys.Where(k => !used.Contains(k)).ToList();
        if (extra.Count > 0)
            notes.Add($"{extra.Count} tensor(s) in the weights are not in the model and were ignored: {string.Join(", ", extra.Take(8))}{(extra.Count > 8 ? ", ..." : "")}");
        return new WeightLoadReport(loaded, skipped, notes);
    }
}
