using System.ComponentModel;
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
    // Each [Description] is the option's text in `train --help` (HostSetup.SettingOptions); a default that depends on
    // the data or the run is resolved once at the start by RunDefaults and says its rule here.
    [Description("Model architecture from a loaded plugin: vit-tiny (default), vit-small, vit-b16, vit-b32, vit-l16, vit-l32, vit-h14, auto (the architecture of --weights), onnx (--model-file)")]
    public string Model { get; set; } = "vit-tiny";
    [Description("Forward ONNX file for --model onnx")]
    public string? ModelFile { get; set; }
    [Description("Pretrained weights: a safetensors file, a folder, or a sharded index (model.safetensors.index.json)")]
    public string? Weights { get; set; }
    [Description("Parameter naming of the weights: auto (default: detected from the keys), torchvision, hf or timm")]
    public string WeightsFormat { get; set; } = "auto";
    [Description("What export writes: onnx (default: the inference model) or safetensors (the weights, in --export-naming)")]
    public string ExportFormat { get; set; } = "onnx";
    [Description("Parameter naming of a safetensors export: torchvision (default), hf or timm")]
    public string ExportNaming { get; set; } = "torchvision";
    [Description("Dataset from a loaded plugin: shapes (default; procedural, no files), mnist, fashion-mnist, cifar10, image-folder")]
    public string Dataset { get; set; } = "shapes";
    [Description("Folder with the dataset's files (default: the dataset's own, e.g. /usr/share/datasets/fashion-mnist)")]
    public string? DataDir { get; set; }
    [Description("Precision policy: auto (default: 32-true on the CPU, bf16-mixed or 16-mixed on CUDA), 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true")]
    public string Precision { get; set; } = "auto";
    [Description("Dynamic loss scaling: true or false (default: the policy's, on for 16-mixed)")]
    public bool? LossScaling { get; set; }
    [Description("The dynamic loss scale to start from (GradScaler's init_scale), 1 to 2^24 (default 65536)")]
    public double LossScaleInit { get; set; } = 65536;
    [Description("Update rounding of 16-bit parameters: nearest (default) or kahan (compensated; true policies)")]
    public string Rounding { get; set; } = "nearest";
    [Description("Also export a float16 inference model (model.fp16.onnx): true or false (default)")]
    public bool ExportFp16 { get; set; }
    [Description("Passes over the training split. Default (0): the dataset's own number if it has one (shapes 6), else 10")]
    public int Epochs { get; set; }
    [Description("Images per optimizer step, per --gradient-accumulation micro-batch (default 64)")]
    public int BatchSize { get; set; } = 64;
    [Description("Peak learning rate of the schedule (default 0.001)")]
    public double Lr { get; set; } = 1e-3;
    [Description("adamw (default), adam or sgd")]
    public string Optimizer { get; set; } = "adamw";
    [Description("Weight decay (default 0.05; decoupled for adamw)")]
    public double WeightDecay { get; set; } = 0.05;
    [Description("SGD momentum (default 0.9)")]
    public double Momentum { get; set; } = 0.9;
    [Description("Clip the global gradient norm to this (default 1; empty = no clipping)")]
    public double? MaxGradNorm { get; set; } = 1.0;
    [Description("Learning-rate schedule after the warm-up: cosine (default), linear or constant")]
    public string Schedule { get; set; } = "cosine";
    [Description("Steps of linear learning-rate warm-up. Default (empty): 5% of the run's optimizer steps, at least 5 "
        + "(3 epochs of Fashion-MNIST at batch 64: 126 of 2,529); a number wins")]
    public int? WarmupSteps { get; set; }
    [Description("Label smoothing in [0, 1) (default 0)")]
    public double LabelSmoothing { get; set; }
    [Description("Micro-batches per optimizer step (default 1)")]
    public int GradientAccumulation { get; set; } = 1;
    [Description("cpu (default) or cuda[:N]")]
    public string Device { get; set; } = "cpu";
    [Description("Seed of weights, data order, splits and augmentation (default 42)")]
    public int Seed { get; set; } = 42;
    [Description("Run folder (default: runs/<date-time>)")]
    public string? Output { get; set; }
    [Description("Checkpoint to continue from (exactly where it stopped)")]
    public string? Resume { get; set; }
    [Description("Input side in pixels. Default (0): the dataset's native size when its images are square and at most 64 px "
        + "(Fashion-MNIST 28, shapes 16), rounded to a multiple of the patch size and at least 4 patches a side, "
        + "unless --weights are given; otherwise the model's own (vit-tiny 32, vit-b16 224)")]
    public int ImageSize { get; set; }
    [Description("Images per split (0 = all, the default), for quick runs")]
    public int Limit { get; set; }
    [Description("Data loader threads (default 2)")]
    public int Workers { get; set; } = 2;
    [Description("Training augmentation: none, flip, crop, crop-flip, or auto (default): none for runs of up to 10 epochs; "
        + "longer runs flip below 128 px and take random resized crops + flips from 128 px")]
    public string Augment { get; set; } = "auto";
    [Description("ORT's CPU memory arena: true (default; faster steps) or false (lower peak memory; see docs/benchmarks.md)")]
    public bool CpuArena { get; set; } = true;
    [Description("Mixed policies on a device without 16-bit matrix kernels (the CPU): keep the activations saved for the backward in 16 bits, "
        + "as autocast does on a GPU (products still computed in fp32): less memory, slower steps (ViT-B/16 batch 8 on 2 cores: -9% peak; step time +20% bf16-mixed, +3% 16-mixed; docs/benchmarks.md). Default false")]
    public bool LowPrecisionActivations { get; set; }
    [Description("Intra-op threads of ONNX Runtime, in one pool shared by the run's sessions (default 0 = one per core)")]
    public int Threads { get; set; }
    [Description("Write a metrics line every N optimizer steps (default 10)")]
    public int LogEvery { get; set; } = 10;
    [Description("Checkpoint every N optimizer steps (default 0 = at the end of each epoch only)")]
    public int CheckpointEvery { get; set; }
    [Description("An unreadable sample: stop (default) or skip")]
    public string BadSamples { get; set; } = "stop";
    [Description("Train only the parameters matching these globs (repeatable; default: all)")]
    public string[] Trainable { get; set; } = [];
    [Description("Freeze the parameters matching these globs (repeatable)")]
    public string[] Freeze { get; set; } = [];
    [Description("Layer-wise learning-rate decay in (0, 1] (BEiT/MAE finetuning): layer l of L gets lr x decay^(L + 1 - l); empty (default) = off")]
    public double? LayerDecay { get; set; }
    [Description("Epochs at the start that update only the head; the rest keeps its weights and optimizer state (default 0 = off)")]
    public int HeadWarmupEpochs { get; set; }
    [Description("Data-parallel ranks per node (default 1; one per GPU on CUDA); more than 1 starts them through Open MPI's mpirun")]
    public int Devices { get; set; } = 1;
    [Description("Nodes of a multi-node data-parallel run (default 1; with --hostfile; see docs/distributed.md)")]
    public int NumNodes { get; set; } = 1;
    [Description("Open MPI hostfile naming the nodes of a multi-node run")]
    public string? Hostfile { get; set; }

    /// <summary>A copy (arrays shared: they are never changed in place).</summary>
    public TrainSettings Clone() => (TrainSettings)MemberwiseClone();

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
        Check(Epochs >= 0, "Train:Epochs (--epochs)", Epochs, "must be at least 1 (or 0: automatic)");
        Check(BatchSize >= 1 && BatchSize <= 65536, "Train:BatchSize (--batch-size)", BatchSize, "must be between 1 and 65536");
        Check(Lr > 0 && Lr < 10 && double.IsFinite(Lr), "Train:Lr (--lr)", Lr, "must be a positive number below 10");
        Check(Optimizer is "sgd" or "adam" or "adamw", "Train:Optimizer (--optimizer)", Optimizer, "must be sgd, adam or adamw");
        Check(WeightDecay >= 0, "Train:WeightDecay (--weight-decay)", WeightDecay, "must be >= 0");
        Check(MaxGradNorm is null or > 0, "Train:MaxGradNorm (--max-grad-norm)", MaxGradNorm, "must be > 0");
        Check(Schedule is "constant" or "cosine" or "linear", "Train:Schedule (--schedule)", Schedule, "must be constant, cosine or linear");
        Check(WarmupSteps is null or >= 0, "Train:WarmupSteps (--warmup-steps)", WarmupSteps, "must be >= 0");
        Check(LabelSmoothing >= 0 && LabelSmoothing < 1, "Train:LabelSmoothing (--label-smoothing)", LabelSmoothing, "must be in [0, 1)");
        Check(GradientAccumulation >= 1, "Train:GradientAccumulation (--gradient-accumulation)", GradientAccumulation, "must be at least 1");
        Check(ImageSize is 0 or (>= 8 and <= 4096), "Train:ImageSize (--image-size)", ImageSize, "must be 0 (automatic) or between 8 and 4096");
        Check(Limit >= 0, "Train:Limit (--limit)", Limit, "must be >= 0");
        Check(Workers is >= 1 and <= 64, "Train:Workers (--workers)", Workers, "must be between 1 and 64");
        Check(Threads >= 0, "Train:Threads (--threads)", Threads, "must be >= 0");
        Check(LogEvery >= 1, "Train:LogEvery (--log-every)", LogEvery, "must be at least 1");
        Check(CheckpointEvery >= 0, "Train:CheckpointEvery (--checkpoint-every)", CheckpointEvery, "must be >= 0");
        Check(Augment is "auto" or "flip" or "crop" or "crop-flip" or "none", "Train:Augment (--augment)", Augment, "must be auto, flip, crop, crop-flip or none");
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
