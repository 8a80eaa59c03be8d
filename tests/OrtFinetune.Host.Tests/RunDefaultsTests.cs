using System.ComponentModel;
using System.Reflection;
using Microsoft.Extensions.Configuration;
using OrtFinetune.Abstractions;
using OrtFinetune.Host.Configuration;

namespace OrtFinetune.Host.Tests;

/// <summary>The defaults that follow the data and the run (<see cref="RunDefaults"/>): pure rules, no training.</summary>
public class RunDefaultsTests
{
    static readonly ModelInputSize VitTiny = new(32, 4), VitB16 = new(224, 16);

    [Fact]
    public void FashionMnistForThreeEpochsGetsItsNativeSizeNoAugmentationAndAFivePercentWarmup()
    {
        var r = RunDefaults.Resolve(new TrainSettings { Dataset = "fashion-mnist", Epochs = 3 }, VitTiny, 54_000, 28);
        Assert.Equal((28, "none", 126), (r.Settings.ImageSize, r.Settings.Augment, r.Settings.WarmupSteps));
        Assert.Equal("defaults from the data: image size 28 (the dataset's native size), augmentation none (a run of 3 epochs), warm-up 126 steps (5% of 2,529)", r.Summary);
    }

    sealed class Images(int count) : IImageDataset
    {
        public string Name => "images";
        public int Count => count;
        public IReadOnlyList<string> ClassNames => ["a", "b"];
        public ImageSample Get(int index) => throw new NotSupportedException();
    }

    [Fact]
    public void DataParallelRanksEachCountTheirShardsSteps()
    {
        var splits = new DatasetSplits(new Images(54_001), new Images(10), new Images(10)) { NativeImageSize = 28 };
        var s = new TrainSettings { Epochs = 3 };
        Assert.Equal(126, RunDefaults.Resolve(s, splits, VitTiny).Settings.WarmupSteps);              // 5% of 843 x 3
        Assert.Equal(63, RunDefaults.Resolve(s, splits, VitTiny, world: 2).Settings.WarmupSteps);    // shards of 27,001: 5% of 421 x 3
    }

    [Fact]
    public void ValuesTheUserGaveAreKeptAndNothingIsLogged()
    {
        var s = new TrainSettings { ImageSize = 20, Augment = "flip", WarmupSteps = 100, Epochs = 3 };
        var r = RunDefaults.Resolve(s, VitTiny, 54_000, 28);
        Assert.Equal((20, "flip", 100), (r.Settings.ImageSize, r.Settings.Augment, r.Settings.WarmupSteps));
        Assert.Null(r.Summary);
        Assert.NotSame(s, r.Settings);
        var zero = RunDefaults.Resolve(new TrainSettings { WarmupSteps = 0 }, VitTiny, 54_000, 28);
        Assert.Equal(0, zero.Settings.WarmupSteps);
    }

    [Fact]
    public void TheInputSettingsAreNotChanged()
    {
        var s = new TrainSettings();
        RunDefaults.Resolve(s, VitTiny, 54_000, 28, 5);
        Assert.Equal((0, 0, "auto", (int?)null), (s.ImageSize, s.Epochs, s.Augment, s.WarmupSteps));
    }

    [Fact]
    public void ShapesWithNothingSetGetsTheDatasetsSizeAndEpochs()
    {
        var r = RunDefaults.Resolve(new TrainSettings(), VitTiny, 14_400, 16, 5);
        Assert.Equal((16, 5, "none", 56), (r.Settings.ImageSize, r.Settings.Epochs, r.Settings.Augment, r.Settings.WarmupSteps));
        Assert.Equal("defaults from the data: image size 16 (the dataset's native size), epochs 5 (the dataset's own), augmentation none (a run of 5 epochs), warm-up 56 steps (5% of 1,125)", r.Summary);
        var other = RunDefaults.Resolve(new TrainSettings(), VitTiny, 54_000, 28);   // a dataset without its own epochs
        Assert.Equal(10, other.Settings.Epochs);
        Assert.StartsWith("defaults from the data: image size 28 (the dataset's native size), epochs 10 (the default), augmentation none (a run of 10 epochs), warm-up 422 steps", other.Summary);
    }

    [Theory]
    [InlineData(28, 28)]      // Fashion-MNIST, MNIST
    [InlineData(32, 32)]      // CIFAR-10
    [InlineData(16, 16)]      // shapes
    [InlineData(30, 32)]      // 7.5 patches: halves round up
    [InlineData(26, 28)]
    [InlineData(64, 64)]      // the largest "small" image
    [InlineData(96, 32)]      // larger: the model's default
    [InlineData(12, 32)]      // 3 patches a side: too few
    public void ImageSizeFollowsSmallNativeImagesInPatchMultiples(int native, int expected)
    {
        Assert.Equal(expected, RunDefaults.ImageSize(native, VitTiny, pretrained: false)!.Value.Size);
    }

    [Fact]
    public void ImageSizeKeepsTheModelsDefaultWhenTheDataCannotServeIt()
    {
        Assert.Equal(224, RunDefaults.ImageSize(28, VitB16, pretrained: false)!.Value.Size);   // 2x2 patches of 16 px
        Assert.Equal(64, RunDefaults.ImageSize(64, VitB16, pretrained: false)!.Value.Size);
        Assert.Equal(32, RunDefaults.ImageSize(null, VitTiny, pretrained: false)!.Value.Size);  // image-folder: sizes vary
        Assert.Equal(32, RunDefaults.ImageSize(16, VitTiny, pretrained: true)!.Value.Size);     // pretrained weights keep theirs
        Assert.Null(RunDefaults.ImageSize(28, null, pretrained: false));                          // --model onnx / auto: the model decides
        var r = RunDefaults.Resolve(new TrainSettings { Model = "onnx", Epochs = 20 }, null, 1000, 28);
        Assert.Equal((0, "auto"), (r.Settings.ImageSize, r.Settings.Augment));                   // a long run at a size the loader learns later
    }

    [Theory]
    [InlineData(1, 28, "none")]
    [InlineData(10, 28, "none")]
    [InlineData(11, 28, "flip")]
    [InlineData(30, 64, "flip")]
    [InlineData(20, 224, "crop-flip")]
    [InlineData(10, 224, "none")]
    public void AutoAugmentationIsNoneForShortRunsAndTheSizeRuleOtherwise(int epochs, int size, string expected)
    {
        var r = RunDefaults.Resolve(new TrainSettings { Epochs = epochs, ImageSize = size }, VitTiny, 6400);
        Assert.Equal(expected, r.Settings.Augment);
    }

    [Theory]
    [InlineData(54_000, 64, 1, 3, 126)]     // 2,529 steps
    [InlineData(5_400, 64, 1, 10, 42)]      // 840 steps
    [InlineData(54_000, 64, 2, 3, 63)]      // accumulation halves the optimizer steps
    [InlineData(640, 32, 1, 2, 5)]          // 40 steps: the minimum
    [InlineData(64, 16, 1, 1, 4)]           // 4 steps: all of them
    public void WarmupIsFivePercentOfTheRunsStepsAtLeastFive(int images, int batch, int accumulation, int epochs, int expected)
    {
        var s = new TrainSettings { BatchSize = batch, GradientAccumulation = accumulation, Epochs = epochs };
        Assert.Equal(expected, RunDefaults.Resolve(s, VitTiny, images, 28).Settings.WarmupSteps);
    }

    [Fact]
    public void WarmupSummarySaysWhenTheMinimumApplies()
    {
        var r = RunDefaults.Resolve(new TrainSettings { BatchSize = 32, Epochs = 2, ImageSize = 16, Augment = "none" }, VitTiny, 640, 16);
        Assert.Equal("defaults from the data: warm-up 5 steps (5% of 40, below the minimum of 5)", r.Summary);
    }

    [Theory]
    [InlineData("100", 100)]
    [InlineData("0", 0)]
    [InlineData("", null)]
    public void WarmupStepsBindsANumberOrEmptyForAutomatic(string value, int? expected)
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["Train:WarmupSteps"] = value }).Build();
        var errors = new List<string>();
        var s = TrainSettings.FromConfiguration(config, errors);
        s.Validate(errors);
        Assert.Empty(errors);
        Assert.Equal(expected, s.WarmupSteps);
    }

    [Fact]
    public void EverySettingHasAHelpText()
    {
        var missing = typeof(TrainSettings).GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.GetCustomAttribute<DescriptionAttribute>() == null).Select(p => p.Name).ToList();
        Assert.Empty(missing);
        var options = HostSetup.SettingOptions().ToDictionary(o => o.Key, o => o.Option.Description);
        Assert.StartsWith("Input side in pixels. Default (0): the dataset's native size", options["ImageSize"]);
        Assert.EndsWith("[Train:ImageSize]", options["ImageSize"]);
        Assert.Contains("5% of the run's optimizer steps", options["WarmupSteps"]);
        Assert.Contains("none for runs of up to 10 epochs", options["Augment"]);
        Assert.Contains("the dataset's own number if it has one (shapes 6), else 10", options["Epochs"]);
    }
}
