using System.Globalization;
using System.Reflection;
using Microsoft.Extensions.Configuration;

namespace OrtFinetune.Host.Configuration;

/// <summary>
/// Settings of a training run: the "Train" section of appsettings.json / environment
/// (ORTFINETUNE_Train__BatchSize=...) / command line, the command line winning.
/// </summary>
public sealed class TrainSettings
{
    public string Model { get; set; } = "vit-tiny";
    /// <summary>Forward ONNX file for the "onnx" model.</summary>
    public string? ModelFile { get; set; }
    /// <summary>Pretrained weights: a safetensors file, a folder, or a sharded index (model.safetensors.index.json).</summary>
    public string? Weights { get; set; }
    /// <summary>Parameter naming of the weights: auto (detected from the keys), torchvision, hf or timm.</summary>
    public string WeightsFormat { get; set; } = "auto";
    /// <summary>What the export verb writes: onnx (inference model) or safetensors (the weights, in ExportNaming).</summary>
    public string ExportFormat { get; set; } = "onnx";
    /// <summary>Parameter naming of a safetensors export: torchvision, hf or timm.</summary>
    public string ExportNaming { get; set; } = "torchvision";
    public string Dataset { get; set; } = "shapes";
    public string? DataDir { get; set; }
    public string Precision { get; set; } = "auto";
    /// <summary>Dynamic loss scaling: empty = the policy's default (on for 16-mixed), true/false to force.</summary>
    public bool? LossScaling { get; set; }
    /// <summary>The dynamic loss scale to start from (GradScaler's init_scale), up to 2^24.</summary>
    public double LossScaleInit { get; set; } = 65536;
    /// <summary>Update rounding of 16-bit parameters: nearest or kahan (true policies).</summary>
    public string Rounding { get; set; } = "nearest";
    /// <summary>Also export a float16 inference model (model.fp16.onnx).</summary>
    public bool ExportFp16 { get; set; }
    public int Epochs { get; set; } = 10;
    public int BatchSize { get; set; } = 64;
    public double Lr { get; set; } = 3e-3;
    public string Optimizer { get; set; } = "adamw";
    public double WeightDecay { get; set; } = 0.05;
    public double Momentum { get; set; } = 0.9;
    public double? MaxGradNorm { get; set; } = 1.0;
    public string Schedule { get; set; } = "cosine";
    public int WarmupSteps { get; set; } = 50;
    public double LabelSmoothing { get; set; }
    public int GradientAccumulation { get; set; } = 1;
    public string Device { get; set; } = "cpu";
    public int Seed { get; set; } = 42;
    public string? Output { get; set; }
    public string? Resume { get; set; }
    /// <summary>Input side in pixels; 0 = the model's default.</summary>
    public int ImageSize { get; set; }
    /// <summary>Samples per split (0 = all), for quick runs.</summary>
    public int Limit { get; set; }
    public int Workers { get; set; } = 2;
    /// <summary>Training augmentation: auto (random resized crop + flip for images of 128 px and more, flip below), flip, crop, none.</summary>
    public string Augment { get; set; } = "auto";
    /// <summary>ORT's CPU memory arena: faster steps, higher peak memory (see docs/benchmarks.md).</summary>
    public bool CpuArena { get; set; } = true;
    public int Threads { get; set; }
    public int LogEvery { get; set; } = 10;
    /// <summary>Checkpoint every N optimizer steps (0 = at the end of each epoch only).</summary>
    public int CheckpointEvery { get; set; }
    public string BadSamples { get; set; } = "stop";
    public string[] Trainable { get; set; } = [];
    public string[] Freeze { get; set; } = [];
    /// <summary>Layer-wise learning-rate decay (BEiT/MAE finetuning), in (0, 1]: layer l of L gets lr * decay^(L + 1 - l); empty = off.</summary>
    public double? LayerDecay { get; set; }
    /// <summary>Epochs at the start that update only the head (the rest keeps its weights and optimizer state); 0 = off.</summary>
    public int HeadWarmupEpochs { get; set; }
    /// <summary>Data-parallel ranks per node (one per GPU on CUDA); more than 1 starts them through Open MPI's mpirun.</summary>
    public int Devices { get; set; } = 1;
    /// <summary>Nodes of a multi-node data-parallel run (with --hostfile; see docs/distributed.md).</summary>
    public int NumNodes { get; set; } = 1;
    /// <summary>Open MPI hostfile naming the nodes of a multi-node run.</summary>
    public string? Hostfile { get; set; }

    static readonly Dictionary<string, PropertyInfo> Props =
        typeof(TrainSettings).GetProperties().ToDictionary(p => p.Name, StringComparer.OrdinalIgnoreCase);

    /// <summary>Binds the "Train" section; unknown keys and unparsable values are errors naming the key and value.</summary>
    public static TrainSettings FromConfiguration(IConfiguration config, List<string> errors)
    {
        var s = new TrainSettings();
        var section = config.GetSection("Train");
        foreach (var child in section.GetChildren())
        {
            if (!Props.TryGetValue(child.Key, out var p))
            {
                errors.Add($"Train:{child.Key}: unknown setting (known: {string.Join(", ", Props.Keys)})");
                continue;
            }
            if (p.PropertyType == typeof(string[]))
            {
                var items = child.GetChildren().Select(c => c.Value ?? "").ToArray();
                p.SetValue(s, items.Length > 0 ? items : child.Value?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) ?? []);
                continue;
            }
            if (!TryConvert(child.Value, p.PropertyType, out var v))
            {
                errors.Add($"Train:{child.Key} = '{child.Value}': not a valid {Describe(p.PropertyType)}");
                continue;
            }
            p.SetValue(s, v);
        }
        return s;
    }

    static string Describe(Type t) => (Nullable.GetUnderlyingType(t) ?? t).Name switch { "Int32" => "integer", "Double" => "number", "Boolean" => "true/false", var n => n.ToLowerInvariant() };

    static bool TryConvert(string? text, Type t, out object? value)
    {
        value = null;
        var u = Nullable.GetUnderlyingType(t);
        if (u != null && string.IsNullOrEmpty(text)) return true;
        t = u ?? t;
        if (t == typeof(string)) { value = text; return true; }
        if (t == typeof(int) && int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var i)) { value = i; return true; }
        if (t == typeof(double) && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var d)) { value = d; return true; }
        if (t == typeof(bool) && bool.TryParse(text, out var b)) { value = b; return true; }
        return false;
    }

    /// <summary>Checks values that are wrong whatever the plugins are; messages name the setting and the value.</summary>
    public void Validate(List<string> errors)
    {
        void Check(bool ok, string key, object? value, string rule) { if (!ok) errors.Add($"{key} = '{value}': {rule}"); }
        Check(Epochs >= 1, "Train:Epochs (--epochs)", Epochs, "must be at least 1");
        Check(BatchSize >= 1 && BatchSize <= 65536, "Train:BatchSize (--batch-size)", BatchSize, "must be between 1 and 65536");
        Check(Lr > 0 && Lr < 10 && double.IsFinite(Lr), "Train:Lr (--lr)", Lr, "must be a positive number below 10");
        Check(Optimizer is "sgd" or "adam" or "adamw", "Train:Optimizer (--optimizer)", Optimizer, "must be sgd, adam or adamw");
        Check(WeightDecay >= 0, "Train:WeightDecay (--weight-decay)", WeightDecay, "must be >= 0");
        Check(MaxGradNorm is null or > 0, "Train:MaxGradNorm (--max-grad-norm)", MaxGradNorm, "must be > 0");
        Check(Schedule is "constant" or "cosine" or "linear", "Train:Schedule (--schedule)", Schedule, "must be constant, cosine or linear");
        Check(WarmupSteps >= 0, "Train:WarmupSteps (--warmup-steps)", WarmupSteps, "must be >= 0");
        Check(LabelSmoothing >= 0 && LabelSmoothing < 1, "Train:LabelSmoothing (--label-smoothing)", LabelSmoothing, "must be in [0, 1)");
        Check(GradientAccumulation >= 1, "Train:GradientAccumulation (--gradient-accumulation)", GradientAccumulation, "must be at least 1");
        Check(ImageSize is 0 or (>= 8 and <= 4096), "Train:ImageSize (--image-size)", ImageSize, "must be 0 (model default) or between 8 and 4096");
        Check(Limit >= 0, "Train:Limit (--limit)", Limit, "must be >= 0");
        Check(Workers is >= 1 and <= 64, "Train:Workers (--workers)", Workers, "must be between 1 and 64");
        Check(Threads >= 0, "Train:Threads (--threads)", Threads, "must be >= 0");
        Check(LogEvery >= 1, "Train:LogEvery (--log-every)", LogEvery, "must be at least 1");
        Check(CheckpointEvery >= 0, "Train:CheckpointEvery (--checkpoint-every)", CheckpointEvery, "must be >= 0");
        Check(Augment is "auto" or "flip" or "crop" or "none", "Train:Augment (--augment)", Augment, "must be auto, flip, crop or none");
        Check(LossScaleInit is >= 1 and <= 1 << 24, "Train:LossScaleInit (--loss-scale-init)", LossScaleInit, "must be between 1 and 16777216 (2^24)");
        Check(Rounding is "nearest" or "kahan", "Train:Rounding (--rounding)", Rounding, "must be nearest or kahan");
        Check(LayerDecay is null or (> 0 and <= 1), "Train:LayerDecay (--layer-decay)", LayerDecay, "must be in (0, 1] (e.g. 0.75; 1 = no decay)");
        Check(HeadWarmupEpochs >= 0, "Train:HeadWarmupEpochs (--head-warmup-epochs)", HeadWarmupEpochs, "must be >= 0");
        Check(BadSamples is "stop" or "skip", "Train:BadSamples (--bad-samples)", BadSamples, "must be stop or skip");
        Check(Devices is >= 1 and <= 1024, "Train:Devices (--devices)", Devices, "must be between 1 and 1024");
        Check(NumNodes is >= 1 and <= 4096, "Train:NumNodes (--num-nodes)", NumNodes, "must be between 1 and 4096");
        if (Hostfile != null) Check(File.Exists(Hostfile), "Train:Hostfile (--hostfile)", Hostfile, "file does not exist");
        Check(NumNodes == 1 || Hostfile != null || Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") != null, "Train:NumNodes (--num-nodes)", NumNodes,
            "a multi-node run needs --hostfile naming the nodes (or start it with mpirun/srun yourself)");
        if (DataDir != null) Check(Directory.Exists(DataDir), "Train:DataDir (--data-dir)", DataDir, "folder does not exist");
        if (Resume != null) Check(File.Exists(Resume), "Train:Resume (--resume)", Resume, "checkpoint file does not exist");
        if (ModelFile != null) Check(File.Exists(ModelFile), "Train:ModelFile (--model-file)", ModelFile, "file does not exist");
        if (Weights != null) Check(File.Exists(Weights) || Directory.Exists(Weights), "Train:Weights (--weights)", Weights, "file or folder does not exist");
        Check(WeightsFormat is "auto" or "torchvision" or "hf" or "timm", "Train:WeightsFormat (--weights-format)", WeightsFormat, "must be auto, torchvision, hf or timm");
        Check(ExportFormat is "onnx" or "safetensors", "Train:ExportFormat (--export-format, export --format)", ExportFormat, "must be onnx or safetensors");
        Check(ExportNaming is "torchvision" or "hf" or "timm", "Train:ExportNaming (--export-naming, export --naming)", ExportNaming, "must be torchvision, hf or timm");
        try { OrtFinetune.Training.Runtime.DeviceSpec.Parse(Device); }
        catch (OrtFinetune.Training.Runtime.TrainingException e) { errors.Add($"Train:Device (--device) = '{Device}': {e.Message}"); }
    }
}
