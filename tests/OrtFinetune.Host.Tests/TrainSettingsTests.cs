using OrtFinetune.Host.Commands;
using OrtFinetune.Host.Configuration;

namespace OrtFinetune.Host.Tests;

[Collection("console")]
public class TrainSettingsTests
{
    static (int Code, string Err) Run(Dictionary<string, string?> config)
    {
        var err = Console.Error;
        var sw = new StringWriter();
        Console.SetError(sw);
        try { return (TrainCommand.Execute(config, false), sw.ToString()); }
        finally { Console.SetError(err); }
    }

    [Theory]
    [InlineData("BatchSize", "0", "Train:BatchSize (--batch-size) = '0': must be between 1 and 65536")]
    [InlineData("Lr", "abc", "Train:Lr = 'abc': not a valid number")]
    [InlineData("Epochs", "-2", "Train:Epochs (--epochs) = '-2': must be at least 1 (or 0: automatic)")]
    [InlineData("Device", "tpu", "Train:Device (--device) = 'tpu'")]
    [InlineData("DataDir", "/no/such/folder", "Train:DataDir (--data-dir) = '/no/such/folder': folder does not exist")]
    [InlineData("Optimizer", "lion", "Train:Optimizer (--optimizer) = 'lion': must be sgd, adam or adamw")]
    [InlineData("Bogus", "1", "Train:Bogus: unknown setting")]
    [InlineData("WarmupSteps", "abc", "Train:WarmupSteps = 'abc': not a valid integer")]
    [InlineData("WarmupSteps", "-1", "Train:WarmupSteps (--warmup-steps) = '-1': must be >= 0")]
    [InlineData("Augment", "mirror", "Train:Augment (--augment) = 'mirror': must be auto, flip, crop, crop-flip or none")]
    [InlineData("ImageSize", "4", "Train:ImageSize (--image-size) = '4': must be 0 (automatic) or between 8 and 4096")]
    [InlineData("WeightsFormat", "keras", "Train:WeightsFormat (--weights-format) = 'keras': must be auto, torchvision, hf or timm")]
    [InlineData("ExportNaming", "jax", "Train:ExportNaming (--export-naming, export --naming) = 'jax': must be torchvision, hf or timm")]
    [InlineData("Weights", "/no/such/weights", "Train:Weights (--weights) = '/no/such/weights': file or folder does not exist")]
    public void BadSettingsNameTheKeyAndValue(string key, string value, string message)
    {
        var (code, err) = Run(new() { [$"Train:{key}"] = value });
        Assert.Equal(ExitCodes.Usage, code);
        Assert.Contains(message, err);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public void KebabNames() => Assert.Equal("batch-size", HostSetup.Kebab("BatchSize"));
}
