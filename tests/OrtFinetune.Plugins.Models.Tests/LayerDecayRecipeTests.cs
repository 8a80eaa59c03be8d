using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using OrtFinetune.Plugins.Models.Weights;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Models.Tests;

/// <summary>
/// Layer-wise learning-rate decay (issue 13): the optimizer's per-parameter learning rates for a ViT equal the
/// BEiT/MAE finetuning recipe, written out here from MAE's util/lr_decay.py (param_groups_lrd and
/// get_layer_id_for_vit) on timm's parameter names, independently of <see cref="LayerDecay"/> and the layer ids:
/// one SGD step (momentum 0, weight decay 0) moves every parameter by exactly lr x scale x gradient.
/// </summary>
public class LayerDecayRecipeTests(ITestOutputHelper log)
{
    /// <summary>MAE util/lr_decay.py get_layer_id_for_vit (after BEiT's optim_factory.py).</summary>
    static int GetLayerIdForVit(string name, int numLayers)
    {
        if (name is "cls_token" or "pos_embed") return 0;
        if (name.StartsWith("patch_embed", StringComparison.Ordinal)) return 0;
        if (name.StartsWith("blocks", StringComparison.Ordinal)) return int.Parse(name.Split('.')[1]) + 1;
        return numLayers;
    }

    [Theory]
    [InlineData("vit-tiny", 0.75, 0L)]
    [InlineData("vit-tiny", 0.75, OptimizerBuilder.DefaultBucketBytes)]
    [InlineData("vit-tiny", 0.65, 64L << 10)]
    public void EffectiveLearningRatesFollowMaesRecipe(string arch, double decay, long bucketBytes)
    {
        var def = new VitModelProvider().Create(new ModelRequest { Architecture = arch, NumClasses = 3, Seed = 1 });
        var ps = def.Forward.Graph.Initializers.Values.Where(t => t.Type == DataType.Float).ToList();
        var o = new OptimizerOptions { Type = "sgd", Momentum = 0, WeightDecay = 0, BucketBytes = bucketBytes, LrMultipliers = LayerDecay.Scales(def, decay) };
        using var h = new OptimizerHarness(OptimizerBuilder.Build(ps, o), ps, o);
        var rng = new Random(2);
        var g = ps.ToDictionary(p => p.Name, p => Enumerable.Range(0, (int)p.ElementCount).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray());
        const float lr = 1e-2f;
        h.Step(g, lr, 1);

        // param_groups_lrd: num_layers = len(model.blocks) + 1; layer_scales[i] = layer_decay ** (num_layers - i).
        var timm = NameMap.For(WeightNaming.Timm);
        int blocks = ps.Select(p => VitNames.SplitLayer(p.Name)?.Layer ?? -1).Max() + 1;
        int numLayers = blocks + 1;
        var table = new SortedDictionary<int, (double Scale, List<string> Names)>();
        foreach (var p in ps)
        {
            var timmName = timm.KeysFor(p.Name)[0];
            int id = GetLayerIdForVit(timmName, numLayers);
            double scale = Math.Pow(decay, numLayers - id);
            // torch: param_group["lr"] = lr * param_group["lr_scale"] (float64); SGD adds -lr * grad with lr rounded to float32.
            float lrEff = (float)((double)lr * scale);
            var expected = p.ToFloats().Select((x, i) => x - g[p.Name][i] * lrEff).ToArray();
            Assert.True(expected.SequenceEqual(h.Get(p.Name)), $"{p.Name} ({timmName}, layer {id}): not moved by lr x {scale} x gradient");
            if (!table.TryGetValue(id, out var row)) table[id] = row = (scale, []);
            row.Names.Add(timmName);
        }
        Assert.Equal(blocks + 2, table.Count);
        Assert.Equal(1.0, table[numLayers].Scale);
        Assert.Contains("head.weight", table[numLayers].Names);
        Assert.Contains("patch_embed.proj.weight", table[0].Names);
        if (bucketBytes > 0) Assert.All(h.Buckets, b => Assert.All(b.Members, m => Assert.Equal(o.LrMultiplier(m.Param), b.LrMultiplier)));
        foreach (var (id, (scale, names)) in table) log.WriteLine($"layer {id}: lr scale {scale:G6} ({names.Count} tensors, e.g. {names[0]})");
        log.WriteLine($"{(bucketBytes == 0 ? "per-parameter" : $"{h.Buckets.Count} buckets")}: all {ps.Count} tensors moved by exactly lr x scale x gradient");
    }
}
