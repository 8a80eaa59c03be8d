using System.CommandLine;
using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Host.Configuration;
using OrtFinetune.Host.Plugins;

namespace OrtFinetune.Host.Commands;

/// <summary><c>ortfinetune plugins</c>: lists loaded plugins, what they provide, and those that failed.</summary>
public static class PluginsCommand
{
    public static Command Create(Option<string[]> pluginDirs)
    {
        var cmd = new Command("plugins", "List the loaded plugins and what they provide.");
        cmd.SetAction(r =>
        {
            using var host = HostSetup.CreateBuilder(PluginDirConfig(r, pluginDirs), false).Build();
            var catalog = host.Services.GetRequiredService<PluginCatalog>();
            foreach (var p in catalog.Plugins)
            {
                Console.WriteLine($"{p.Name} {p.Version} ({p.Path})");
                foreach (var what in p.Provides) Console.WriteLine($"    {what}");
                if (p.Error != null) Console.WriteLine($"    error: {p.Error}");
            }
            if (catalog.Plugins.Count == 0) Console.WriteLine("no plugins found in: " + string.Join(", ", HostSetup.PluginFolders(host.Services.GetRequiredService<Microsoft.Extensions.Configuration.IConfiguration>())));
            return catalog.Failed.Any() ? ExitCodes.BadInput : ExitCodes.Ok;
        });
        return cmd;
    }

    public static Dictionary<string, string?> PluginDirConfig(ParseResult r, Option<string[]> pluginDirs)
    {
        var d = new Dictionary<string, string?>();
        var dirs = r.GetValue(pluginDirs) ?? [];
        for (int i = 0; i < dirs.Length; i++) d[$"Plugins:Folders:{i}"] = Path.GetFullPath(dirs[i]);
        return d;
    }
}
